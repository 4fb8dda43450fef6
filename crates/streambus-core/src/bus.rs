//! The embeddable API: [`Bus`], its lifecycle and [`BusSnapshot`]. Sessions are
//! [`SessionHandle`]s (module [`crate::session_handle`]).
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
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use ractor::{Actor, ActorRef};
use serde::Serialize;
use streambus_sinks::SinkRegistry;
use streambus_types::{BusConfig, CloseReason, Message, SubscriptionOptions};

use crate::access::Access;
use crate::actors::session::SessionId;
use crate::actors::session::{SessionMessage, SessionSnapshot};
use crate::actors::session_manager::{
    OpenedSession, SessionManager, SessionManagerArgs, SessionManagerMessage, SessionManagerSnapshot,
};
use crate::actors::topic::TopicSnapshot;
use crate::actors::topic_supervisor::{
    ObservedTopics, TopicSupervisor, TopicSupervisorArgs, TopicSupervisorMessage, TopicSupervisorSnapshot,
};
use crate::budget::{MemoryBudget, MemorySnapshot};
use crate::error::{BusError, answered};
use crate::metrics::{BusMetrics, MetricsSnapshot};
use crate::router::Router;
use crate::session_handle::SessionHandle;
use crate::sinks::{self, PreparedSink, SinkRuntime, SinkSnapshot};
use crate::subscription::Subscription;

/// How long one actor gets to answer an `Observe` for a snapshot.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Options of a new session.
#[derive(Debug)]
pub struct ConnectOptions {
    /// The client's name, shown in snapshots and logs.
    pub name: String,
    /// The client's network address, if it has one (shown in snapshots).
    pub peer: Option<String>,
    /// What the session may do; `None`: anything.
    pub access: Option<Access>,
}

impl ConnectOptions {
    /// A session called `name`.
    pub fn named(name: impl Into<String>) -> Self {
        ConnectOptions {
            name: name.into(),
            peer: None,
            access: None,
        }
    }

    /// The client's network address.
    pub fn peer(mut self, peer: impl Into<String>) -> Self {
        self.peer = Some(peer.into());
        self
    }

    /// Restricts the session to `access` (its identity's permissions and quota).
    pub fn access(mut self, access: Access) -> Self {
        self.access = Some(access);
        self
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
    /// The bus-wide memory budget: its size, what is admitted, waits and refusals.
    pub memory: MemorySnapshot,
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

/// The bus's counters that cost no per-actor call: the supervisors' own counters, the
/// bus-wide metrics and the memory budget. What [`Bus::counters`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct BusCounters {
    /// Session manager counters.
    pub session_manager: SessionManagerSnapshot,
    /// Topic supervisor counters.
    pub topic_supervisor: TopicSupervisorSnapshot,
    /// Messages, refusals, drops, gaps and latency, bus-wide.
    pub metrics: MetricsSnapshot,
    /// Publish batches admitted and not yet fanned out, bus-wide.
    pub inflight_batches: usize,
    /// The bus-wide memory budget.
    pub memory: MemorySnapshot,
    /// Seconds since the bus started.
    pub uptime_seconds: f64,
    /// Whether the bus is draining or stopped (it takes no new sessions or publishes).
    pub draining: bool,
}

/// The session manager's live sessions and counters.
type ObservedSessions = (Vec<ActorRef<SessionMessage>>, SessionManagerSnapshot);

/// What [`Bus::quiesce`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Quiesced {
    /// Every admitted message reached its subscribers' buffers in time.
    pub complete: bool,
    /// Publish batches still admitted and not fanned out when it returned.
    pub inflight_batches: usize,
}

/// What every clone of a [`Bus`] shares.
struct BusInner {
    /// The validated configuration, as started.
    config: BusConfig,
    /// The publish path (directory, bus-wide in-flight count, closing flag, limits),
    /// shared with every session handle. Shutdown closes it first.
    router: Arc<Router>,
    /// The session manager: opens sessions (a call, answered at once) and closes them
    /// all at shutdown. Stopped last by [`Bus::shutdown`].
    sessions: ActorRef<SessionManagerMessage>,
    /// The topic supervisor: owns the topics and the subscription index; calls only.
    /// Stopped last by [`Bus::shutdown`], after the sessions.
    topics: ActorRef<TopicSupervisorMessage>,
    /// The session behind `Bus::publish` and `Bus::subscribe`: opened on first use, and
    /// opened again if it ever failed, so the shorthands never stay broken. The async
    /// lock serializes only that (re)opening.
    default_session: tokio::sync::Mutex<Option<OpenedSession>>,
    /// The sink runtime; set once at start when any sink is configured.
    sinks: std::sync::OnceLock<SinkRuntime>,
    /// When the bus started (for its uptime).
    started: std::time::Instant,
}

/// A running bus. Clones share it.
#[derive(Clone)]
pub struct Bus {
    /// The actor roots and the shared state; the last clone's drop does not stop the
    /// actors (call [`Bus::shutdown`]).
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("closing", &self.inner.router.is_closing())
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
        let prepared = sinks::prepare(&config, &registry)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let budget = MemoryBudget::new(config.limits.max_memory_bytes);
        let metrics = Arc::new(BusMetrics::default());
        let args = TopicSupervisorArgs {
            topics: config.topics.clone(),
            limits: config.limits.clone(),
            budget: budget.clone(),
            directory: tx,
            federated: config.cluster.enabled(),
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
            metrics: metrics.clone(),
        };
        let (sessions, _) = Actor::spawn(None, SessionManager, args)
            .await
            .map_err(|e| BusError::Internal(format!("starting the session manager: {e}")))?;
        tracing::info!("bus started");
        let drain_timeout = Duration::from_millis(config.shutdown.drain_timeout_ms);
        let bus = Bus {
            inner: Arc::new(BusInner {
                router: Router::new(directory, budget, &config.limits, drain_timeout, metrics),
                config,
                sessions,
                topics,
                default_session: tokio::sync::Mutex::new(None),
                sinks: std::sync::OnceLock::new(),
                started: std::time::Instant::now(),
            }),
        };
        if !prepared.is_empty()
            && let Err(e) = bus.start_sinks(prepared).await
        {
            bus.shutdown().await;
            return Err(e);
        }
        Ok(bus)
    }

    /// Starts the sink runtime; its subscriptions and dead letters go through a session
    /// of its own, called `sinks`.
    async fn start_sinks(&self, prepared: Vec<PreparedSink>) -> Result<(), BusError> {
        let (actor, shared) = self.open("sinks".into(), None, None, true).await?;
        let session = SessionHandle::new(self.inner.router.clone(), actor, shared);
        let runtime = SinkRuntime::start(&self.inner.config, prepared, session).await?;
        let _ = self.inner.sinks.set(runtime);
        Ok(())
    }

    /// The bus as a cluster backplane sees it, through a session of its own called
    /// `cluster`. Only a bus started with `[cluster]` enabled keeps the local interest
    /// a backplane follows; any other is refused with [`BusError::InvalidOption`].
    pub async fn federation(&self) -> Result<crate::Federation, BusError> {
        let Some(interest) = self.inner.router.directory.interest.clone() else {
            return Err(BusError::InvalidOption(
                "the bus was started without [cluster] servers: it keeps no interest to federate".into(),
            ));
        };
        let (actor, shared) = self.open("cluster".into(), None, None, true).await?;
        let session = SessionHandle::new(self.inner.router.clone(), actor, shared);
        Ok(crate::Federation::new(session, interest))
    }

    /// Every configured sink's snapshot.
    pub async fn sinks(&self) -> Result<Vec<SinkSnapshot>, BusError> {
        match self.inner.sinks.get() {
            Some(runtime) => runtime.snapshots().await,
            None => Ok(Vec::new()),
        }
    }

    /// The configuration the bus runs with.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Opens a session; an `internal` one is the bus's own (see
    /// [`Bus::quiesce`]).
    async fn open(
        &self,
        name: String,
        peer: Option<String>,
        access: Option<Access>,
        internal: bool,
    ) -> Result<OpenedSession, BusError> {
        let router = &self.inner.router;
        if router.is_closing() {
            return Err(BusError::Closed);
        }
        if !internal && router.is_draining() {
            return Err(BusError::Draining);
        }
        answered(
            self.inner
                .sessions
                .call(
                    |reply| SessionManagerMessage::Open {
                        name,
                        peer,
                        access: access.map(Box::new),
                        internal,
                        reply,
                    },
                    None,
                )
                .await,
        )?
    }

    /// Opens a session.
    pub async fn connect(&self, options: ConnectOptions) -> Result<SessionHandle, BusError> {
        let (actor, shared) = self.open(options.name, options.peer, options.access, false).await?;
        Ok(SessionHandle::new(self.inner.router.clone(), actor, shared))
    }

    /// The session behind [`Bus::publish`] and [`Bus::subscribe`].
    pub async fn default_session(&self) -> Result<SessionHandle, BusError> {
        let mut slot = self.inner.default_session.lock().await;
        if let Some((actor, shared)) = slot.as_ref() {
            let handle = SessionHandle::new(self.inner.router.clone(), actor.clone(), shared.clone());
            if handle.is_open() {
                return Ok(handle);
            }
        }
        let (actor, shared) = self.open("default".into(), None, None, false).await?;
        *slot = Some((actor.clone(), shared.clone()));
        Ok(SessionHandle::new(self.inner.router.clone(), actor, shared))
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
        let ((session_actors, session_manager), (mut topics, topic_supervisor)) = self.observe_roots(true).await?;
        let sessions = join_all(
            session_actors
                .iter()
                .map(|a| a.call(SessionMessage::Observe, Some(OBSERVE_TIMEOUT))),
        )
        .await;
        let sinks = self.sinks().await?;
        // An actor that stopped between the two steps simply is not in the snapshot.
        let mut sessions: Vec<SessionSnapshot> = sessions.into_iter().filter_map(|r| answered(r).ok()).collect();
        sessions.sort_by_key(|s| s.id);
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(BusSnapshot {
            session_manager,
            topic_supervisor,
            sessions,
            topics,
            inflight_batches: self.inner.router.inflight.count(),
            memory: self.inner.router.budget.snapshot(),
            sinks,
        })
    }

    /// The counters that cost no per-actor call (two supervisor calls and atomic reads),
    /// cheap enough for every metrics scrape whatever the number of sessions and topics.
    pub async fn counters(&self) -> Result<BusCounters, BusError> {
        let ((_, session_manager), (_, topic_supervisor)) = self.observe_roots(false).await?;
        let router = &self.inner.router;
        Ok(BusCounters {
            session_manager,
            topic_supervisor,
            metrics: router.metrics.snapshot(),
            inflight_batches: router.inflight.count(),
            memory: router.budget.snapshot(),
            uptime_seconds: self.inner.started.elapsed().as_secs_f64(),
            draining: router.is_draining() || router.is_closing(),
        })
    }

    /// What the session manager and the topic supervisor answer to `Observe`: their
    /// live children and their own counters (the topics' only with `detail`).
    async fn observe_roots(&self, detail: bool) -> Result<(ObservedSessions, ObservedTopics), BusError> {
        let sessions = answered(
            self.inner
                .sessions
                .call(SessionManagerMessage::Observe, Some(OBSERVE_TIMEOUT))
                .await,
        )?;
        let topics = answered(
            self.inner
                .topics
                .call(
                    |reply| TopicSupervisorMessage::Observe { detail, reply },
                    Some(OBSERVE_TIMEOUT),
                )
                .await,
        )?;
        Ok((sessions, topics))
    }

    /// The bus-wide metrics alone (atomic reads, no actor call).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.router.metrics.snapshot()
    }

    /// Counts a request refused with `code` before any session saw it (a transport's
    /// refusal: a client that failed to authenticate).
    pub fn note_refusal(&self, code: streambus_types::ErrorCode) {
        self.inner.router.metrics.refused(code);
    }

    /// Whether the bus takes new sessions and publishes (not draining or stopped).
    pub fn is_accepting(&self) -> bool {
        let router = &self.inner.router;
        !router.is_draining() && !router.is_closing()
    }

    /// The live client session `id`, or [`BusError::UnknownSession`].
    async fn find_session(&self, id: SessionId) -> Result<SessionHandle, BusError> {
        let found = answered(
            self.inner
                .sessions
                .call(|reply| SessionManagerMessage::Find { id, reply }, Some(OBSERVE_TIMEOUT))
                .await,
        )?;
        let (actor, shared) = found.ok_or(BusError::UnknownSession(id.0))?;
        Ok(SessionHandle::new(self.inner.router.clone(), actor, shared))
    }

    /// A snapshot of the live client session `id`.
    pub async fn session(&self, id: SessionId) -> Result<SessionSnapshot, BusError> {
        let handle = self.find_session(id).await?;
        handle.snapshot().await.map_err(|_| BusError::UnknownSession(id.0))
    }

    /// Closes the live client session `id` for an operator, gracefully: its publishes
    /// reach their subscribers and its subscriptions' buffers are sent. A session served
    /// over the network is closed by its transport, which tells its client (the gRPC
    /// stream ends with `UNAVAILABLE`); any other is closed here. Returns once the close
    /// is under way.
    pub async fn close_session(&self, id: SessionId) -> Result<(), BusError> {
        let handle = self.find_session(id).await?;
        tracing::info!(session = id.0, "session close requested by an operator");
        if handle.shared().watched.load(std::sync::atomic::Ordering::Acquire) {
            handle.shared().close_requested.notify_one();
            Ok(())
        } else {
            handle.close().await
        }
    }

    /// A snapshot of the live topic `name`; `None` if it is not live (never published
    /// to, or reaped).
    pub async fn topic(&self, name: &str) -> Result<Option<TopicSnapshot>, BusError> {
        let topic = streambus_types::Topic::new(name)?;
        let Some(entry) = self.inner.router.directory.topics.get(&topic).map(|r| r.clone()) else {
            return Ok(None);
        };
        match &entry.awake {
            Some(core) => Ok(Some(core.snapshot())),
            None => Ok(Some(entry.shared.snapshot())),
        }
    }

    /// Starts a quarantined sink again with a fresh restart budget (an operator fixed
    /// its destination); a sink that is not quarantined is left as it is. Returns its
    /// snapshot.
    pub async fn restart_sink(&self, name: &str) -> Result<SinkSnapshot, BusError> {
        match self.inner.sinks.get() {
            Some(runtime) => runtime.restart(name).await,
            None => Err(BusError::UnknownSink(name.to_owned())),
        }
    }

    /// The first half of a graceful stop that delivers: from now on no client session
    /// may open, publish or subscribe ([`BusError::Draining`]), while everything already
    /// admitted keeps flowing to its subscribers, whose buffers stay open. Waits (up to
    /// `timeout`) until every admitted message is in its subscribers' buffers.
    ///
    /// A server calls this first, then lets each stream send what its subscriptions
    /// hold, then calls [`Bus::shutdown`]. Closing sessions before this point would end
    /// a `block` subscription while publishes of other sessions still wait for it.
    pub async fn quiesce(&self, timeout: Duration) -> Quiesced {
        let router = &self.inner.router;
        router.start_draining();
        let complete = router.wait_quiet(timeout).await;
        let inflight_batches = router.inflight.count();
        if !complete {
            tracing::error!(
                inflight_batches,
                timeout_ms = timeout.as_millis() as u64,
                "drain: admitted messages did not all reach their subscribers in time (a block subscriber is not reading)"
            );
        }
        Quiesced {
            complete,
            inflight_batches,
        }
    }

    /// Drains and stops the bus. Idempotent.
    pub async fn shutdown(&self) {
        let router = &self.inner.router;
        if router.close() {
            return;
        }
        let timeout = router.drain_timeout;
        if !router.wait_quiet(timeout).await {
            tracing::error!(
                inflight_batches = router.inflight.count(),
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
            sinks.shutdown(timeout).await;
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

    /// Makes the actor of the awake topic `topic` panic (starting it first if the topic
    /// has none yet), to exercise supervision.
    #[cfg(feature = "testsuite")]
    pub fn inject_topic_panic(&self, topic: &str) -> Result<(), BusError> {
        let topic = streambus_types::Topic::new(topic)?;
        let core = self
            .inner
            .router
            .directory
            .topics
            .get(&topic)
            .and_then(|r| r.awake.clone())
            .ok_or(BusError::Closed)?;
        core.tell(crate::actors::topic::TopicMessage::Crash);
        Ok(())
    }

    /// Makes the next fan-out of the awake topic `topic` panic, wherever it runs (most
    /// often in a publisher's task), to exercise supervision of that path.
    #[cfg(feature = "testsuite")]
    pub fn inject_fan_out_panic(&self, topic: &str) -> Result<(), BusError> {
        let topic = streambus_types::Topic::new(topic)?;
        let entry = self.inner.router.directory.topics.get(&topic).ok_or(BusError::Closed)?;
        entry
            .shared
            .fail_next_fan_out
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
