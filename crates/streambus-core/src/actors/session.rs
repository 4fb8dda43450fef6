//! The `Session` actor: one per client connection, in-process or gRPC.
//!
//! A session owns its subscriptions (their ids, filters, groups and buffers) and enforces
//! the per-session limits. Subscribe and unsubscribe go through it; publishes do not (a
//! [`crate::SessionHandle`] routes them straight to the topics, counting them in the
//! session's shared counters).
//!
//! # Invariants
//!
//! - Every subscription in `subscriptions` is in the supervisor's index, and vice versa,
//!   except for the instant between a slow-consumer disconnect and the `Forget` that
//!   follows it.
//! - A session that panics is removed by the session manager, which has the topic
//!   supervisor drop all its subscriptions (closing their buffers with `session_failed`);
//!   no other session is touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use streambus_types::config::{LimitsConfig, SubscriptionDefaults};
use streambus_types::{CloseReason, SubscriptionOptions, TopicFilter};

use crate::access::{Access, QuotaSlot};
use crate::actors::topic_supervisor::TopicSupervisorMessage;
use crate::admission::Inflight;
use crate::error::BusError;
use crate::metrics::BusMetrics;
use crate::queue::SubscriberQueue;
use crate::subscription::{Subscriber, SubscriptionId, SubscriptionSnapshot};

/// Identifies a session, unique within a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a session is asked to do.
pub(crate) enum SessionMessage {
    /// Open a subscription (from the session's handle).
    Subscribe {
        filter: TopicFilter,
        options: SubscriptionOptions,
        /// A durable sink's subscription: its deliveries carry durable receipts.
        durable: bool,
        reply: RpcReplyPort<Result<Arc<Subscriber>, BusError>>,
    },
    /// Close a subscription (from its handle, or its `Drop` with no reply).
    Unsubscribe {
        id: SubscriptionId,
        reply: Option<RpcReplyPort<Result<(), BusError>>>,
    },
    /// The bus ended a subscription on its own (slow consumer): forget it.
    Forget(SubscriptionId),
    /// Close every subscription with `reason` and stop (graceful close or shutdown).
    Close {
        reason: CloseReason,
        reply: RpcReplyPort<()>,
    },
    /// Report state.
    Observe(RpcReplyPort<SessionSnapshot>),
    /// Fault injection for supervision tests.
    #[cfg(feature = "testsuite")]
    Crash,
}

/// What a session actor shares with its handles and the session manager: identity,
/// the closed flag and the publish counters (publishes bypass the actor, so their
/// counters cannot live in its state).
#[derive(Debug)]
pub(crate) struct SessionShared {
    /// Unique within the bus; assigned by the session manager.
    pub(crate) id: SessionId,
    /// The client's name, for snapshots and logs.
    pub(crate) name: String,
    /// The bus's own session (the sink runtime's): not refused while the bus drains, so
    /// that sinks can still publish dead letters.
    pub(crate) internal: bool,
    /// Set when the session closes or fails (by the handle's `close`, the actor's
    /// `Close` and `post_stop`, or the session manager); never cleared. Publishes and
    /// subscribes are refused from then on.
    pub(crate) closed: AtomicBool,
    /// Closed because its client stopped reading (the server's write deadline); read by
    /// the session manager when the session ends, to count it.
    pub(crate) slow_consumer: AtomicBool,
    /// Publish batches handed to topics and not yet fanned out. Each batch carries a
    /// guard of it; a graceful close waits for it to reach zero.
    pub(crate) inflight: Arc<Inflight>,
    /// Messages admitted to topics (written by the publishing tasks).
    pub(crate) published_messages: AtomicU64,
    /// Payload and header bytes of the messages counted above.
    pub(crate) published_bytes: AtomicU64,
    /// The client's network address, if it has one (shown in snapshots).
    pub(crate) peer: Option<String>,
    /// When the session opened, in milliseconds since the Unix epoch.
    pub(crate) connected_at_ms: u64,
    /// Set by the transport that serves the session (the gRPC stream) when it starts
    /// waiting on `close_requested`: an operator's close is then its to carry out, so
    /// that its client is told and what is buffered is sent first.
    pub(crate) watched: AtomicBool,
    /// An operator asked for the session to close ([`crate::Bus::close_session`]);
    /// notified once (`notify_one` keeps the permit if the transport is not waiting).
    pub(crate) close_requested: tokio::sync::Notify,
    /// What the session may do (`None`: anything).
    pub(crate) access: Option<Access>,
    /// The session's place in its identity's session quota, given back when the actor
    /// stops.
    pub(crate) quota_slot: parking_lot::Mutex<Option<QuotaSlot>>,
}

/// A point-in-time view of one session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    /// The id.
    pub id: SessionId,
    /// The client's name.
    pub name: String,
    /// The client's network address, if it has one.
    pub peer: Option<String>,
    /// The bus's own session (the sink runtime's), not a client's.
    pub internal: bool,
    /// When the session opened, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// Messages published.
    pub published_messages: u64,
    /// Payload and header bytes published.
    pub published_bytes: u64,
    /// Publish batches admitted to topics and not yet fanned out.
    pub inflight_batches: usize,
    /// The subscriptions.
    pub subscriptions: Vec<SubscriptionSnapshot>,
}

/// Arguments of a session actor, given by the session manager.
pub(crate) struct SessionArgs {
    /// Shared with the session's handles and the manager's entry for it.
    pub(crate) shared: Arc<SessionShared>,
    /// The topic supervisor, which owns the subscription index. The session calls it
    /// for every subscribe and unsubscribe and waits for the answer, so a subscription
    /// is in place (or gone) when the session replies to its client.
    pub(crate) topics: ActorRef<TopicSupervisorMessage>,
    /// The bus's limits; the session enforces `max_subscriptions_per_session`.
    pub(crate) limits: LimitsConfig,
    /// What a subscription gets when its options leave a field out.
    pub(crate) defaults: SubscriptionDefaults,
    /// Subscription ids, shared by every session of the bus so that ids are unique
    /// bus-wide (topics and the index key on them).
    pub(crate) next_subscription: Arc<AtomicU64>,
    /// The bus-wide counters, handed to each subscription's buffer.
    pub(crate) metrics: Arc<BusMetrics>,
}

/// State of a session actor.
pub(crate) struct SessionState {
    /// What the session was started with.
    args: SessionArgs,
    /// The session's live subscriptions. The same `Arc<Subscriber>` sits in the index
    /// and in every matching topic; the session's copy is what it closes on close.
    subscriptions: HashMap<SubscriptionId, Arc<Subscriber>>,
    /// The session's span (id and name): the parent of its lifecycle logs.
    span: tracing::Span,
}

/// The session actor.
pub(crate) struct SessionActor;

impl SessionState {
    async fn subscribe(
        &mut self,
        myself: &ActorRef<SessionMessage>,
        filter: TopicFilter,
        options: SubscriptionOptions,
        durable: bool,
    ) -> Result<Arc<Subscriber>, BusError> {
        if self.args.shared.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let max = self.args.limits.max_subscriptions_per_session;
        if self.subscriptions.len() >= max {
            return Err(BusError::TooManySubscriptions { max });
        }
        let d = &self.args.defaults;
        let buffer_messages = options.buffer_messages.unwrap_or(d.buffer_messages);
        let buffer_bytes = options.buffer_bytes.unwrap_or(d.buffer_bytes);
        if buffer_messages == 0 || buffer_bytes == 0 {
            return Err(BusError::InvalidOption("buffer sizes must be greater than zero".into()));
        }
        let group = match options.queue_group {
            Some(g) if g.is_empty() || g.len() > 256 || g.chars().any(|c| !c.is_ascii_graphic()) => {
                return Err(BusError::InvalidOption(format!(
                    "queue group {g:?} must be 1 to 256 visible ASCII characters"
                )));
            }
            g => g.map(Arc::<str>::from),
        };
        let id = SubscriptionId(self.args.next_subscription.fetch_add(1, Ordering::Relaxed));
        let subscriber = Arc::new(Subscriber {
            id,
            session: self.args.shared.id,
            filter,
            group,
            queue: SubscriberQueue::new(
                options.overflow.unwrap_or(d.overflow),
                buffer_messages,
                buffer_bytes,
                self.args.metrics.clone(),
            ),
            session_ref: myself.clone(),
            durable,
            local_only: options.local_only,
        });
        let sub = subscriber.clone();
        self.args
            .topics
            .call(
                |reply| TopicSupervisorMessage::Subscribe { subscriber: sub, reply },
                None,
            )
            .await
            .map_err(|_| BusError::Closed)?;
        tracing::debug!(parent: &self.span, subscription = id.0, filter = %subscriber.filter, "subscribed");
        self.subscriptions.insert(id, subscriber.clone());
        Ok(subscriber)
    }

    async fn unsubscribe(&mut self, ids: Vec<SubscriptionId>, reason: CloseReason) {
        for id in &ids {
            self.subscriptions.remove(id);
        }
        let _ = self
            .args
            .topics
            .call(
                |reply| TopicSupervisorMessage::Unsubscribe {
                    ids,
                    reason,
                    reply: Some(reply),
                },
                None,
            )
            .await;
    }

    fn snapshot(&self) -> SessionSnapshot {
        let shared = &self.args.shared;
        let mut subscriptions: Vec<_> = self.subscriptions.values().map(|s| s.snapshot()).collect();
        subscriptions.sort_by_key(|s| s.id);
        SessionSnapshot {
            id: shared.id,
            name: shared.name.clone(),
            peer: shared.peer.clone(),
            internal: shared.internal,
            connected_at_ms: shared.connected_at_ms,
            published_messages: shared.published_messages.load(Ordering::Relaxed),
            published_bytes: shared.published_bytes.load(Ordering::Relaxed),
            inflight_batches: shared.inflight.count(),
            subscriptions,
        }
    }
}

impl Actor for SessionActor {
    type Msg = SessionMessage;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMessage>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let span = tracing::info_span!("session", id = args.shared.id.0, name = %args.shared.name);
        tracing::debug!(parent: &span, "session opened");
        Ok(SessionState {
            args,
            subscriptions: HashMap::new(),
            span,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMessage>,
        message: SessionMessage,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMessage::Subscribe {
                filter,
                options,
                durable,
                reply,
            } => {
                let _ = reply.send(state.subscribe(&myself, filter, options, durable).await);
            }
            SessionMessage::Unsubscribe { id, reply } => {
                let known = state.subscriptions.contains_key(&id);
                if known {
                    state.unsubscribe(vec![id], CloseReason::Unsubscribed).await;
                }
                if let Some(reply) = reply {
                    let _ = reply.send(if known {
                        Ok(())
                    } else {
                        Err(BusError::UnknownSubscription(id.0))
                    });
                }
            }
            SessionMessage::Forget(id) => {
                state.subscriptions.remove(&id);
            }
            SessionMessage::Close { reason, reply } => {
                state.args.shared.closed.store(true, Ordering::Release);
                let ids = state.subscriptions.keys().copied().collect();
                state.unsubscribe(ids, reason).await;
                let _ = reply.send(());
                // Drain, not stop: requests already queued are answered (subscribes
                // with `Closed`, observes normally) rather than silently dropped.
                myself.drain()?;
            }
            SessionMessage::Observe(reply) => {
                let _ = reply.send(state.snapshot());
            }
            #[cfg(feature = "testsuite")]
            SessionMessage::Crash => panic!("injected session crash"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMessage>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.shared.closed.store(true, Ordering::Release);
        state.args.shared.quota_slot.lock().take();
        tracing::debug!(parent: &state.span, "session closed");
        Ok(())
    }
}
