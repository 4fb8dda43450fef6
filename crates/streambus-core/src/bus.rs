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
use streambus_sinks::{BufferOptions, DurableBuffer, FsyncPolicy, SinkFactory, SinkRegistry, SinkSpec};
use streambus_types::config::{BufferKind, WhenFull};
use streambus_types::{
    BusConfig, CloseReason, ConfigError, Message, OverflowPolicy, SubscriptionOptions, Topic, TopicFilter,
};

use crate::actors::session::{SessionId, SessionMessage, SessionShared, SessionSnapshot};
use crate::actors::session_manager::{
    OpenedSession, SessionManager, SessionManagerArgs, SessionManagerMessage, SessionManagerSnapshot,
};
use crate::actors::sink_supervisor::{SinkEntryArgs, SinkSupervisor, SinkSupervisorArgs, SinkSupervisorMessage};
use crate::actors::topic::{TopicMessage, TopicSnapshot};
use crate::actors::topic_supervisor::{
    TopicSupervisor, TopicSupervisorArgs, TopicSupervisorMessage, TopicSupervisorSnapshot,
};
use crate::admission::Inflight;
use crate::directory::{Admit, Directory};
use crate::error::{BusError, answered};
use crate::receipt::{Receipt, ReceiptToken};
use crate::sinks::shared::{MEMORY_CHANNEL_CHUNKS, MemorySource, SinkShared, Source};
use crate::sinks::{SinkSnapshot, SinkStatus, intake};
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
    /// Every configured sink, by name.
    pub sinks: Vec<SinkSnapshot>,
}

impl BusSnapshot {
    /// The topic called `name`, if it is alive.
    pub fn topic(&self, name: &str) -> Option<&TopicSnapshot> {
        self.topics.iter().find(|t| t.topic.as_str() == name)
    }

    /// The sink called `name`, if it is configured.
    pub fn sink(&self, name: &str) -> Option<&SinkSnapshot> {
        self.sinks.iter().find(|s| s.name == name)
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
    /// Runs the configured sinks; set once at start when any is configured.
    sinks: std::sync::OnceLock<ActorRef<SinkSupervisorMessage>>,
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
    /// Validates `config` and starts the actor tree, with the built-in sink types.
    pub async fn start(config: BusConfig) -> Result<Bus, BusError> {
        Bus::start_with_sinks(config, SinkRegistry::with_builtins()).await
    }

    /// Validates `config` and starts the actor tree; `[[sinks]]` entries are built with
    /// the types of `registry` (register your own there).
    pub async fn start_with_sinks(config: BusConfig, registry: SinkRegistry) -> Result<Bus, BusError> {
        config.validate()?;
        // Every sink entry is checked by its type before anything starts.
        let mut factories = Vec::new();
        for s in &config.sinks {
            let factory = registry.get(&s.kind).ok_or_else(|| ConfigError {
                field: format!("sinks.{}.type", s.name),
                reason: format!(
                    "unknown sink type {:?} (known: {})",
                    s.kind,
                    registry.kinds().collect::<Vec<_>>().join(", ")
                ),
            })?;
            let spec = SinkSpec {
                name: s.name.clone(),
                options: s.options.clone(),
            };
            factory(&spec)?;
            factories.push((factory, spec));
        }
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
        let bus = Bus {
            inner: Arc::new(BusInner {
                config,
                directory,
                sessions,
                topics,
                inflight: Inflight::new(),
                closing: AtomicBool::new(false),
                default_session: tokio::sync::Mutex::new(None),
                sinks: std::sync::OnceLock::new(),
            }),
        };
        if !factories.is_empty()
            && let Err(e) = bus.start_sinks(factories).await
        {
            bus.shutdown().await;
            return Err(e);
        }
        Ok(bus)
    }

    async fn start_sinks(&self, factories: Vec<(SinkFactory, SinkSpec)>) -> Result<(), BusError> {
        let config = &self.inner.config;
        let session = self.connect(ConnectOptions::named("sinks")).await?;
        let mut sinks = Vec::new();
        for (cfg, (factory, spec)) in config.sinks.iter().zip(factories) {
            let b = &cfg.buffer;
            let (source, tx, overflow) = match b.kind {
                BufferKind::Memory => {
                    let (tx, rx) = tokio::sync::mpsc::channel(MEMORY_CHANNEL_CHUNKS);
                    let source = Source::Memory(tokio::sync::Mutex::new(MemorySource { rx, carry: Vec::new() }));
                    let overflow = match b.when_full {
                        WhenFull::Block => OverflowPolicy::Block,
                        WhenFull::DropNewest => OverflowPolicy::DropNewest,
                    };
                    (source, Some(tx), overflow)
                }
                BufferKind::Disk => {
                    let buffer = DurableBuffer::open(BufferOptions {
                        dir: cfg.buffer_dir(&config.storage),
                        max_bytes: b.max_bytes,
                        segment_bytes: b.segment_bytes,
                        fsync: FsyncPolicy::from_setting(b.fsync, b.fsync_interval_ms),
                        when_full: b.when_full,
                    })
                    .map_err(|e| BusError::Internal(format!("sink {}: {e}", cfg.name)))?;
                    // The intake moves records to disk quickly; the buffer's own
                    // `when_full` decides when the disk is full.
                    (Source::Disk(Arc::new(buffer)), None, OverflowPolicy::Block)
                }
            };
            let mut subscriptions = Vec::new();
            for filter in cfg.filters() {
                let options = SubscriptionOptions {
                    queue_group: None,
                    overflow: Some(overflow),
                    buffer_messages: (b.kind == BufferKind::Memory).then_some(b.max_events),
                    buffer_bytes: (b.kind == BufferKind::Memory).then_some(b.max_bytes as usize),
                };
                let durable = b.kind == BufferKind::Disk;
                subscriptions.push(session.subscribe_as(filter, options, durable).await?);
            }
            let shared = Arc::new(SinkShared {
                config: cfg.clone(),
                dlq: cfg.dead_letter_topic()?,
                source,
                buffers: subscriptions.iter().map(Subscription::queue).collect(),
                pending: tokio::sync::Mutex::new(None),
                session: session.clone(),
                status: parking_lot::Mutex::new(SinkStatus::Starting),
                last_error: parking_lot::Mutex::new(None),
                written: Default::default(),
                batches: Default::default(),
                retries: Default::default(),
                dead_lettered: Default::default(),
                dropped: Default::default(),
                received: Default::default(),
                restarts: Default::default(),
            });
            tokio::spawn(intake::run(shared.clone(), subscriptions, tx));
            tracing::info!(sink = %cfg.name, kind = %cfg.kind, topics = ?cfg.topics, buffer = ?b.kind, "sink started");
            sinks.push(SinkEntryArgs { shared, factory, spec });
        }
        let (actor, _) = Actor::spawn(None, SinkSupervisor, SinkSupervisorArgs { sinks })
            .await
            .map_err(|e| BusError::Internal(format!("starting the sink supervisor: {e}")))?;
        let _ = self.inner.sinks.set(actor);
        Ok(())
    }

    /// Every configured sink's snapshot.
    pub async fn sinks(&self) -> Result<Vec<SinkSnapshot>, BusError> {
        match self.inner.sinks.get() {
            Some(s) => answered(s.call(SinkSupervisorMessage::Observe, Some(OBSERVE_TIMEOUT)).await),
            None => Ok(Vec::new()),
        }
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
        let sinks = self.sinks().await?;
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
            sinks,
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
        // The sinks' subscriptions are closed: each sink writes what it has and stops
        // (a durable sink keeps the rest on disk for the next start).
        if let Some(sinks) = self.inner.sinks.get() {
            if !matches!(
                sinks.call(SinkSupervisorMessage::Drain, Some(timeout)).await,
                Ok(ractor::rpc::CallResult::Success(()))
            ) {
                // Say exactly what is left behind, sink by sink.
                let snapshots = answered(sinks.call(SinkSupervisorMessage::Observe, Some(OBSERVE_TIMEOUT)).await);
                for s in snapshots.unwrap_or_default().iter().filter(|s| s.pending > 0) {
                    match &s.buffer {
                        Some(_) => {
                            tracing::warn!(sink = %s.name, records = s.pending, "sink did not drain in time; its records stay in its disk buffer for the next start")
                        }
                        None => {
                            tracing::error!(sink = %s.name, records = s.pending, error = ?s.last_error, "sink did not drain in time; its buffered records are lost")
                        }
                    }
                }
            }
            let _ = sinks.stop_and_wait(Some("shutdown".into()), Some(timeout)).await;
        }
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

/// Splits a batch by topic, keeping each topic's order. Most batches have one topic:
/// then the batch is kept as it is.
fn group_by_topic(messages: Vec<Message>) -> Vec<(Topic, Vec<Message>)> {
    let Some(first) = messages.first() else {
        return Vec::new();
    };
    if messages.iter().all(|m| m.topic == first.topic) {
        return vec![(first.topic.clone(), messages)];
    }
    let mut groups: Vec<(Topic, Vec<Message>)> = Vec::new();
    for m in messages {
        match groups.iter_mut().find(|(t, _)| *t == m.topic) {
            Some((_, g)) => g.push(m),
            None => groups.push((m.topic.clone(), vec![m])),
        }
    }
    groups
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

    /// Most messages in one publish batch (`limits.max_batch_messages`).
    pub fn batch_limit(&self) -> usize {
        self.bus.config.limits.max_batch_messages
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

    async fn route(
        &self,
        messages: Vec<Message>,
        admit: Admit,
        receipt: Option<&Arc<ReceiptToken>>,
    ) -> Result<(), BusError> {
        self.check(&messages)?;
        let guards = || [self.shared.inflight.guard(), self.bus.inflight.guard()];
        let mut groups = group_by_topic(messages).into_iter();
        while let Some((topic, group)) = groups.next() {
            let (count, bytes) = (group.len(), group.iter().map(Message::byte_len).sum::<usize>());
            match self.bus.directory.send(&topic, group, admit, guards, receipt).await {
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
        self.route(vec![message], Admit::Wait, None).await
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
    pub async fn subscribe(&self, filter: &str, options: SubscriptionOptions) -> Result<Subscription, BusError> {
        self.subscribe_as(TopicFilter::new(filter)?, options, false).await
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
