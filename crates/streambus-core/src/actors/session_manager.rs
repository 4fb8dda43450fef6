//! The `SessionManager` actor: opens sessions, enforces `limits.max_sessions`, and
//! cleans up after every session that ends, cleanly or by a panic.
//!
//! ## Supervision
//!
//! Supervises every `Session` (linked at spawn). A session that fails is not restarted:
//! its client's stream is gone with it. The manager removes it, marks it closed, has the
//! topic supervisor drop its subscriptions (their buffers close with `session_failed`)
//! and counts the failure; no other session is touched.
//!
//! # Invariants
//!
//! - `sessions` holds exactly the live session actors it spawned.
//! - When a session ends for any reason its subscriptions are removed from the index
//!   and every topic (a failure closes their buffers with `session_failed`), so a dead
//!   session never keeps receiving or blocking anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use streambus_types::CloseReason;
use streambus_types::config::{LimitsConfig, SubscriptionDefaults};

use crate::access::Access;
use crate::actors::session::{SessionActor, SessionArgs, SessionId, SessionMessage, SessionShared};
use crate::actors::topic_supervisor::TopicSupervisorMessage;
use crate::admission::Inflight;
use crate::error::BusError;
use crate::metrics::BusMetrics;

/// What the session manager is asked to do.
pub(crate) enum SessionManagerMessage {
    /// Open a session for a client called `name`; an `internal` one (the bus's own, for
    /// sinks) keeps working while the bus drains for shutdown.
    Open {
        name: String,
        peer: Option<String>,
        access: Option<Box<Access>>,
        internal: bool,
        reply: RpcReplyPort<Result<OpenedSession, BusError>>,
    },
    /// The live session with id `id`, if there is one.
    Find {
        id: SessionId,
        reply: RpcReplyPort<Option<OpenedSession>>,
    },
    /// The live session actors and the manager's own counters.
    Observe(RpcReplyPort<(Vec<ActorRef<SessionMessage>>, SessionManagerSnapshot)>),
    /// Close every session with `reason` (shutdown).
    CloseAll {
        reason: CloseReason,
        reply: RpcReplyPort<()>,
    },
}

/// A session just opened: its actor and the counters shared with its handles.
pub(crate) type OpenedSession = (ActorRef<SessionMessage>, Arc<SessionShared>);

/// Counters of the session manager.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionManagerSnapshot {
    /// Live sessions.
    pub sessions: usize,
    /// Sessions opened, in total.
    pub sessions_opened: u64,
    /// Sessions that ended by a failure, in total.
    pub sessions_failed: u64,
    /// Sessions closed because their client stopped reading (the server's write
    /// deadline), in total.
    pub sessions_slow_consumer: u64,
}

/// Arguments of the session manager, given by [`crate::Bus::start`].
pub(crate) struct SessionManagerArgs {
    /// The topic supervisor: handed to every session, and told (by a cast, no answer
    /// awaited) to drop a session's subscriptions when the session ends.
    pub(crate) topics: ActorRef<TopicSupervisorMessage>,
    /// The bus's limits: `max_sessions` here, the rest passed to each session.
    pub(crate) limits: LimitsConfig,
    /// Subscription defaults, passed to each session.
    pub(crate) defaults: SubscriptionDefaults,
    /// The bus-wide counters, passed to each session (for its subscription buffers).
    pub(crate) metrics: Arc<BusMetrics>,
}

/// One live session, as the manager keeps it.
struct SessionEntry {
    /// The session actor, linked to the manager: its end arrives as a supervision event.
    actor: ActorRef<SessionMessage>,
    /// Its shared state; the manager sets `closed` when the session ends, so handles
    /// still held by clients refuse work at once.
    shared: Arc<SessionShared>,
}

/// State of the session manager.
pub(crate) struct SessionManagerState {
    /// What the manager was started with.
    args: SessionManagerArgs,
    /// Live sessions by actor id (the key supervision events carry).
    sessions: HashMap<ActorId, SessionEntry>,
    /// The next session id; ids are never reused within a bus.
    next_session: u64,
    /// Subscription ids, shared by every session (see [`SessionArgs`]).
    next_subscription: Arc<AtomicU64>,
    /// Opened and failed totals; `sessions` is filled in at observe time.
    counters: SessionManagerSnapshot,
}

/// The session manager actor.
pub(crate) struct SessionManager;

impl SessionManagerState {
    /// Forgets a session that ended and drops its subscriptions.
    fn ended(&mut self, id: ActorId, reason: CloseReason) -> Option<SessionId> {
        let entry = self.sessions.remove(&id)?;
        entry.shared.closed.store(true, Ordering::Release);
        let _ = self.args.topics.cast(TopicSupervisorMessage::UnsubscribeSession {
            session: entry.shared.id,
            reason,
            reply: None,
        });
        Some(entry.shared.id)
    }
}

impl Actor for SessionManager {
    type Msg = SessionManagerMessage;
    type State = SessionManagerState;
    type Arguments = SessionManagerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionManagerMessage>,
        args: SessionManagerArgs,
    ) -> Result<SessionManagerState, ActorProcessingErr> {
        Ok(SessionManagerState {
            args,
            sessions: HashMap::new(),
            next_session: 1,
            next_subscription: Arc::new(AtomicU64::new(1)),
            counters: SessionManagerSnapshot::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionManagerMessage>,
        message: SessionManagerMessage,
        state: &mut SessionManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionManagerMessage::Open {
                name,
                peer,
                access,
                internal,
                reply,
            } => {
                let max = state.args.limits.max_sessions;
                if state.sessions.len() >= max {
                    let _ = reply.send(Err(BusError::TooManySessions { max }));
                    return Ok(());
                }
                // The identity's own session limit; the slot goes with the session.
                let quota_slot = match access.as_ref().and_then(|a| a.quota().map(|q| (a.identity(), q))) {
                    Some((identity, quota)) => match quota.open_session(identity) {
                        Ok(slot) => Some(slot),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return Ok(());
                        }
                    },
                    None => None,
                };
                let shared = Arc::new(SessionShared {
                    id: SessionId(state.next_session),
                    name,
                    internal,
                    closed: AtomicBool::new(false),
                    slow_consumer: AtomicBool::new(false),
                    inflight: Inflight::new(),
                    published_messages: AtomicU64::new(0),
                    published_bytes: AtomicU64::new(0),
                    peer,
                    connected_at_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    watched: AtomicBool::new(false),
                    close_requested: tokio::sync::Notify::new(),
                    access: access.map(|a| *a),
                    quota_slot: parking_lot::Mutex::new(quota_slot),
                });
                state.next_session += 1;
                let args = SessionArgs {
                    shared: shared.clone(),
                    topics: state.args.topics.clone(),
                    limits: state.args.limits.clone(),
                    defaults: state.args.defaults.clone(),
                    next_subscription: state.next_subscription.clone(),
                    metrics: state.args.metrics.clone(),
                };
                let result = match Actor::spawn_linked(None, SessionActor, args, myself.get_cell()).await {
                    Ok((actor, _join)) => {
                        state.counters.sessions_opened += 1;
                        state.sessions.insert(
                            actor.get_id(),
                            SessionEntry {
                                actor: actor.clone(),
                                shared: shared.clone(),
                            },
                        );
                        Ok((actor, shared))
                    }
                    Err(e) => Err(BusError::Internal(format!("starting session: {e}"))),
                };
                let _ = reply.send(result);
            }
            SessionManagerMessage::Find { id, reply } => {
                // An operator's lookup: a walk over the live sessions is fine here.
                let found = state
                    .sessions
                    .values()
                    .find(|e| e.shared.id == id && !e.shared.internal)
                    .map(|e| (e.actor.clone(), e.shared.clone()));
                let _ = reply.send(found);
            }
            SessionManagerMessage::Observe(reply) => {
                let actors = state.sessions.values().map(|e| e.actor.clone()).collect();
                let mut counters = state.counters.clone();
                counters.sessions = state.sessions.len();
                let _ = reply.send((actors, counters));
            }
            SessionManagerMessage::CloseAll { reason, reply } => {
                // One at a time, each bounded: a session stuck in a call cannot hold
                // shutdown for longer than its own timeout.
                let actors: Vec<_> = state.sessions.values().map(|e| e.actor.clone()).collect();
                for actor in actors {
                    let _ = actor
                        .call(
                            |r| SessionMessage::Close { reason, reply: r },
                            Some(Duration::from_secs(5)),
                        )
                        .await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SessionManagerMessage>,
        event: SupervisionEvent,
        state: &mut SessionManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = state.ended(cell.get_id(), CloseReason::SessionFailed) {
                    state.counters.sessions_failed += 1;
                    tracing::warn!(session = id.0, error = %err, "session failed; its subscriptions were removed");
                }
            }
            // A clean stop (graceful close, shutdown): its subscriptions are already
            // closed, and removing them again is harmless.
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                let slow = state
                    .sessions
                    .get(&cell.get_id())
                    .is_some_and(|e| e.shared.slow_consumer.load(Ordering::Acquire));
                if state.ended(cell.get_id(), CloseReason::SessionClosed).is_some() && slow {
                    state.counters.sessions_slow_consumer += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SessionManagerMessage>,
        _state: &mut SessionManagerState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }
}
