//! The `TopicSupervisor` actor: starts, restarts and reaps topic actors, and owns the
//! subscription index.
//!
//! Every change to which topics exist and who subscribes to what goes through this one
//! actor, so topic creation and subscription can never race: a topic started after a
//! subscription resolves it from the index; a subscription added after a topic started
//! is sent to it. Publishers only read the directory this actor writes.
//!
//! A topic that nothing in the index matches starts asleep, without an actor (see the
//! directory); the first matching subscription wakes it: its gate is closed to
//! publishers and its actor started, with the subscription among its subscribers,
//! before the subscription is acknowledged.
//!
//! ## Supervision
//!
//! Supervises every `Topic` (linked at spawn). A topic that fails (its actor, or a
//! fan-out in a publisher's task, which fails the actor) is restarted at once with the
//! same shared state, so its sequence, retained value and admission carry on; the
//! incarnation it replaces is retired first, and the batches that died with it
//! (queued, or in the fan-out that failed) are counted and reported to subscribers as
//! a gap by the new incarnation. A topic that stops normally (reaped) is only forgotten.
//!
//! # Invariants
//!
//! - The directory holds at most one entry per topic name, and that entry's actor is the
//!   newest incarnation; `by_actor` maps every live topic actor to its name.
//! - A failed topic actor is restarted at once with the same shared state (sequence,
//!   retained value, admission) and its subscriber set rebuilt from the index.
//! - A topic is reaped only when nothing matches it in the index, it holds no retained
//!   value, it has been idle for `topics.idle_timeout_ms`, and its admission could be
//!   closed with no live permit; so reaping never loses an admitted message.
//! - A topic is asleep (no actor, gate `Asleep`) only while nothing in the index matches
//!   it: a subscription that matches wakes it before it is acknowledged. An awake topic
//!   nothing matches is put to sleep by the next sweep whose admission check finds no
//!   permit out, so sleeping never loses an admitted message either.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use streambus_types::config::{LimitsConfig, TopicsConfig};
use streambus_types::{CloseReason, Topic, TopicFilter};

use crate::actors::session::{SessionId, SessionMessage};
use crate::actors::topic::{TopicActor, TopicArgs, TopicCore, TopicMessage, TopicSnapshot};
use crate::admission::Admission;
use crate::budget::MemoryBudget;
use crate::directory::{Awake, Directory, Gate, TopicRef, TopicShared};
use crate::error::BusError;
use crate::index::SubscriptionIndex;
use crate::subscription::{Subscriber, SubscriptionId};

/// What the topic supervisor is asked to do.
pub(crate) enum TopicSupervisorMessage {
    /// Return the live actor for `topic`, starting it if needed. `stale` names an actor
    /// the caller found dead or closing, to be replaced if it is still the current one.
    Ensure {
        topic: Topic,
        stale: Option<ActorId>,
        reply: RpcReplyPort<Result<TopicRef, BusError>>,
    },
    /// Add a subscription to the index and to every live matching topic.
    Subscribe {
        subscriber: Arc<Subscriber>,
        reply: RpcReplyPort<()>,
    },
    /// Remove subscriptions from the index and every topic, closing their buffers.
    Unsubscribe {
        ids: Vec<SubscriptionId>,
        reason: CloseReason,
        reply: Option<RpcReplyPort<()>>,
    },
    /// Remove every subscription of a session (it failed or closed).
    UnsubscribeSession {
        session: SessionId,
        reason: CloseReason,
        reply: Option<RpcReplyPort<()>>,
    },
    /// Close every subscription buffer (shutdown); what is buffered stays readable.
    CloseAll {
        reason: CloseReason,
        reply: RpcReplyPort<()>,
    },
    /// Reap idle topics (timer).
    Sweep,
    /// The supervisor's own counters and, with `detail`, the live topic actors and the
    /// snapshots of the topics asleep (without it, both lists are empty: a metrics
    /// scrape only needs the counts).
    Observe {
        detail: bool,
        reply: RpcReplyPort<ObservedTopics>,
    },
}

/// What the topic supervisor answers to `Observe`.
pub(crate) type ObservedTopics = (Vec<ActorRef<TopicMessage>>, Vec<TopicSnapshot>, TopicSupervisorSnapshot);

/// Counters of the topic supervisor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicSupervisorSnapshot {
    /// Live topics, asleep or awake.
    pub topics: usize,
    /// Live topics without an actor (nothing subscribes to them).
    pub topics_asleep: usize,
    /// Subscriptions in the index.
    pub subscriptions: usize,
    /// Deliveries waiting in every subscription's buffer.
    pub buffered_messages: usize,
    /// Payload and header bytes of those deliveries.
    pub buffered_bytes: usize,
    /// Topic actors restarted after a failure, in total.
    pub topic_restarts: u64,
    /// Topics stopped for idleness, in total.
    pub topics_reaped: u64,
    /// Awake topics put to sleep because nothing subscribes to them any more, in total.
    pub topics_put_to_sleep: u64,
}

/// Arguments of the topic supervisor, given by [`crate::Bus::start`].
pub(crate) struct TopicSupervisorArgs {
    /// Each new topic's admission (mailbox messages and bytes) and the idle timeout.
    pub(crate) topics: TopicsConfig,
    /// `max_topics`: a publish that would start one more topic is refused.
    pub(crate) limits: LimitsConfig,
    /// The bus-wide memory budget every topic's admission draws on with its own.
    pub(crate) budget: Arc<MemoryBudget>,
    /// Filled in by `pre_start`, which is where the directory is created (it needs this
    /// actor's own reference).
    pub(crate) directory: tokio::sync::oneshot::Sender<Arc<Directory>>,
    /// `[cluster]` is enabled: the directory keeps the local interest for the backplane.
    pub(crate) federated: bool,
}

/// State of the topic supervisor.
pub(crate) struct TopicSupervisorState {
    /// Live topics by name. Only this actor writes it; publishers read it lock-free
    /// (sharded map) and come here on a miss.
    directory: Arc<Directory>,
    /// Every live subscription by filter (exact map and wildcard trie): what a new
    /// topic's subscribers are resolved from.
    index: SubscriptionIndex<SubscriptionId, Arc<Subscriber>>,
    /// Each session's subscriptions, so a session that ends is cleaned in one step.
    by_session: HashMap<SessionId, HashSet<SubscriptionId>>,
    /// Live topic actors by actor id (the key supervision events carry) to their name.
    by_actor: HashMap<ActorId, Topic>,
    /// See [`TopicSupervisorArgs::topics`].
    topics: TopicsConfig,
    /// See [`TopicSupervisorArgs::limits`].
    limits: LimitsConfig,
    /// See [`TopicSupervisorArgs::budget`].
    budget: Arc<MemoryBudget>,
    /// Restart and reap totals; live counts are filled in at observe time.
    counters: TopicSupervisorSnapshot,
}

/// The topic supervisor actor.
pub(crate) struct TopicSupervisor;

impl TopicSupervisorState {
    /// Starts (or restarts) the actor of a topic, with every matching subscription,
    /// and puts it in the directory. The gate is closed to publishers stamping asleep
    /// first, so the actor stamps every publish that follows.
    async fn spawn(
        &mut self,
        myself: &ActorRef<TopicSupervisorMessage>,
        shared: Arc<TopicShared>,
    ) -> Result<TopicRef, BusError> {
        *shared.gate.lock() = Gate::Awake;
        // The incarnation being replaced (failed, or refusing publishers) takes no more
        // batches; what it still held counts as lost, for the new one to report.
        if let Some(old) = self.directory.topics.get(&shared.name).and_then(|r| r.awake.clone()) {
            old.core.retire();
            old.actor.stop(None);
        }
        // A topic put to sleep kept its admission closed; a restart finds it open.
        shared.admission.reopen();
        let mut matches = Vec::new();
        self.index.matches(&shared.name, &mut matches);
        let core = TopicCore::new(shared.clone(), self.directory.clone());
        let args = TopicArgs {
            core: core.clone(),
            subscribers: matches.into_iter().map(|(_, s)| s).collect(),
        };
        let (actor, _join) = Actor::spawn_linked(None, TopicActor, args, myself.get_cell())
            .await
            .map_err(|e| BusError::Internal(format!("starting topic {}: {e}", shared.name)))?;
        self.by_actor.insert(actor.get_id(), shared.name.clone());
        let topic_ref = TopicRef {
            shared,
            awake: Some(Awake { actor, core }),
        };
        self.directory
            .topics
            .insert(topic_ref.shared.name.clone(), topic_ref.clone());
        Ok(topic_ref)
    }

    /// The live actor of `topic`: the current one, or a successor if it is dead or is
    /// `stale` (the caller saw it refuse a message), or a new topic within `max_topics`.
    async fn ensure(
        &mut self,
        myself: &ActorRef<TopicSupervisorMessage>,
        topic: Topic,
        stale: Option<ActorId>,
    ) -> Result<TopicRef, BusError> {
        let shared = match self.directory.topics.get(&topic).map(|r| r.clone()) {
            Some(r) => {
                // An entry asleep is always current: this actor wakes a topic and
                // updates its entry in one step.
                let Some(Awake { actor, .. }) = &r.awake else {
                    return Ok(r);
                };
                let running = matches!(
                    actor.get_status(),
                    ractor::ActorStatus::Starting | ractor::ActorStatus::Running
                );
                if running && Some(actor.get_id()) != stale {
                    return Ok(r);
                }
                // Dead, or refusing messages: start its successor now, with the same
                // shared state (the directory only ever holds open admissions: a reap
                // closes and removes in one step). If its failure event is still
                // queued, the handler will see it was already replaced.
                r.shared
            }
            None => {
                if self.directory.topics.len() >= self.limits.max_topics {
                    return Err(BusError::TooManyTopics {
                        max: self.limits.max_topics,
                    });
                }
                let wanted = self.index.has_match(&topic);
                let shared = TopicShared::new(
                    topic.clone(),
                    Admission::new(
                        self.topics.mailbox_messages,
                        self.topics.mailbox_bytes,
                        self.budget.clone(),
                    ),
                    self.directory.now_ms(),
                    if wanted { Gate::Awake } else { Gate::Asleep },
                );
                if !wanted {
                    let r = TopicRef { shared, awake: None };
                    self.directory.topics.insert(topic, r.clone());
                    return Ok(r);
                }
                shared
            }
        };
        self.spawn(myself, shared).await
    }

    /// Starts the actor of a topic asleep that a subscription now matches. A failure
    /// forgets the topic (its next publish starts it again, awake).
    async fn wake(&mut self, myself: &ActorRef<TopicSupervisorMessage>, shared: Arc<TopicShared>) {
        if let Err(e) = self.spawn(myself, shared.clone()).await {
            *shared.gate.lock() = Gate::Closed;
            self.directory.topics.remove(&shared.name);
            tracing::error!(topic = %shared.name, error = %e, "waking a topic failed; it will start again on the next publish");
        }
    }

    /// Calls `f` on every live topic `filter` matches: one lookup for an exact filter, a
    /// walk over the live topics for a wildcard.
    fn for_each_match(&self, filter: &TopicFilter, mut f: impl FnMut(&TopicRef)) {
        match filter.as_topic() {
            Some(topic) => {
                if let Some(r) = self.directory.topics.get(&topic) {
                    f(&r);
                }
            }
            None => {
                for r in self.directory.topics.iter() {
                    if filter.matches(r.key()) {
                        f(&r);
                    }
                }
            }
        }
    }

    /// Reaps the topics nothing matches that have been idle for `topics.idle_timeout_ms`
    /// and hold no retained value, and puts to sleep the other awake topics nothing
    /// matches (their subscribers left while publishers go on, or they hold a retained
    /// value): their actor stops, and the topic keeps its sequence and retained value
    /// asleep. Either happens only once the topic's admission is closed with no permit
    /// out, so nothing admitted is in its mailbox.
    fn sweep(&mut self) {
        let now = self.directory.now_ms();
        let timeout = self.topics.idle_timeout_ms;
        let idle = |r: &TopicRef| now.saturating_sub(r.shared.last_active_ms.load(Ordering::Relaxed)) >= timeout;
        // Topics asleep are only looked at once idle; awake ones at every sweep.
        let candidates: Vec<TopicRef> = self
            .directory
            .topics
            .iter()
            .filter(|r| r.awake.is_some() || idle(r))
            .map(|r| r.clone())
            .collect();
        for r in candidates {
            if self.index.has_match(&r.shared.name) {
                continue;
            }
            let reap = idle(&r) && r.shared.retained.lock().is_none();
            if !(reap || r.awake.is_some()) || !r.shared.admission.close_if_idle() {
                continue;
            }
            // A publisher stamping it asleep finishes first; later ones start the name
            // anew (reaped) or stamp it asleep.
            *r.shared.gate.lock() = if reap { Gate::Closed } else { Gate::Asleep };
            if let Some(Awake { actor, core }) = &r.awake {
                self.by_actor.remove(&actor.get_id());
                // Its admission is closed with no permit out, so it holds no batch.
                core.retire();
                let _ = actor.drain();
            }
            if reap {
                self.directory.topics.remove(&r.shared.name);
                self.counters.topics_reaped += 1;
            } else {
                // Asleep, the admission stays closed: a publisher still holding the
                // actor is refused there and comes back for this entry.
                self.directory.topics.insert(
                    r.shared.name.clone(),
                    TopicRef {
                        shared: r.shared.clone(),
                        awake: None,
                    },
                );
                self.counters.topics_put_to_sleep += 1;
            }
        }
    }

    /// Adds a subscription to the index and to every live topic it matches (one lookup
    /// for an exact filter), waking those asleep. An awake topic gets it under its
    /// fan-out lock (held only for a fan-out in memory), so it is there before any
    /// publish that follows the reply.
    async fn subscribe(&mut self, myself: &ActorRef<TopicSupervisorMessage>, sub: Arc<Subscriber>) {
        self.by_session.entry(sub.session).or_default().insert(sub.id);
        self.index.insert(sub.id, sub.filter.clone(), sub.clone());
        if let Some(interest) = &self.directory.interest
            && !sub.local_only
        {
            interest.add(sub.interest_key());
        }
        let mut asleep = Vec::new();
        self.for_each_match(&sub.filter, |r| match &r.awake {
            Some(Awake { actor, core }) => core.add(sub.clone(), actor),
            None => asleep.push(r.shared.clone()),
        });
        for shared in asleep {
            self.wake(myself, shared).await;
        }
    }

    /// Removes a subscription from the index, its session's set and every topic it
    /// matches (one lookup for an exact filter), and closes its buffer with `reason`
    /// (what is buffered stays readable). A slow consumer's session is told to forget
    /// it, since the session did not ask.
    fn unsubscribe(&mut self, id: SubscriptionId, reason: CloseReason) {
        let Some((filter, sub)) = self.index.remove(id) else {
            return;
        };
        if let Some(interest) = &self.directory.interest
            && !sub.local_only
        {
            interest.remove(&sub.interest_key());
        }
        self.for_each_match(&filter, |r| {
            if let Some(Awake { actor, core }) = &r.awake {
                core.remove(id, actor);
            }
        });
        if let Some(ids) = self.by_session.get_mut(&sub.session) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_session.remove(&sub.session);
            }
        }
        sub.queue.close(reason);
        if reason == CloseReason::SlowConsumer {
            let _ = sub.session_ref.cast(SessionMessage::Forget(id));
        }
    }
}

impl Actor for TopicSupervisor {
    type Msg = TopicSupervisorMessage;
    type State = TopicSupervisorState;
    type Arguments = TopicSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TopicSupervisorMessage>,
        args: TopicSupervisorArgs,
    ) -> Result<TopicSupervisorState, ActorProcessingErr> {
        let directory = Arc::new(Directory::new(myself.clone(), args.federated));
        let _ = args.directory.send(directory.clone());
        let sweep = Duration::from_millis((args.topics.idle_timeout_ms / 4).clamp(10, 10_000));
        myself.send_interval(sweep, || TopicSupervisorMessage::Sweep);
        Ok(TopicSupervisorState {
            directory,
            index: SubscriptionIndex::default(),
            by_session: HashMap::new(),
            by_actor: HashMap::new(),
            topics: args.topics,
            limits: args.limits,
            budget: args.budget,
            counters: TopicSupervisorSnapshot::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TopicSupervisorMessage>,
        message: TopicSupervisorMessage,
        state: &mut TopicSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TopicSupervisorMessage::Ensure { topic, stale, reply } => {
                let _ = reply.send(state.ensure(&myself, topic, stale).await);
            }
            TopicSupervisorMessage::Subscribe { subscriber, reply } => {
                state.subscribe(&myself, subscriber).await;
                let _ = reply.send(());
            }
            TopicSupervisorMessage::Unsubscribe { ids, reason, reply } => {
                for id in ids {
                    state.unsubscribe(id, reason);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            TopicSupervisorMessage::UnsubscribeSession { session, reason, reply } => {
                let ids = state.by_session.remove(&session).unwrap_or_default();
                for id in ids {
                    state.unsubscribe(id, reason);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            TopicSupervisorMessage::CloseAll { reason, reply } => {
                let ids: Vec<_> = state.by_session.values().flatten().copied().collect();
                for id in ids {
                    state.unsubscribe(id, reason);
                }
                let _ = reply.send(());
            }
            TopicSupervisorMessage::Sweep => state.sweep(),
            TopicSupervisorMessage::Observe { detail, reply } => {
                let (mut actors, mut asleep, mut sleeping) = (Vec::new(), Vec::new(), 0);
                for r in state.directory.topics.iter() {
                    match &r.awake {
                        Some(Awake { actor, .. }) if detail => actors.push(actor.clone()),
                        Some(_) => {}
                        None => {
                            sleeping += 1;
                            if detail {
                                asleep.push(r.shared.snapshot());
                            }
                        }
                    }
                }
                let mut counters = state.counters.clone();
                counters.topics = state.directory.topics.len();
                counters.topics_asleep = sleeping;
                counters.subscriptions = state.index.len();
                // One short lock per subscription buffer, no actor call.
                for subscriber in state.index.values() {
                    let (messages, bytes) = subscriber.queue.depth();
                    counters.buffered_messages += messages;
                    counters.buffered_bytes += bytes;
                }
                let _ = reply.send((actors, asleep, counters));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TopicSupervisorMessage>,
        event: SupervisionEvent,
        state: &mut TopicSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(topic) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let Some(current) = state.directory.topics.get(&topic).map(|r| r.clone()) else {
                    return Ok(());
                };
                current.shared.restarts.fetch_add(1, Ordering::Relaxed);
                state.counters.topic_restarts += 1;
                tracing::warn!(%topic, error = %err, "topic actor failed; restarting");
                if current.awake.as_ref().map(|a| a.actor.get_id()) != Some(cell.get_id()) {
                    // A publisher already had it replaced.
                    return Ok(());
                }
                if let Err(e) = state.spawn(&myself, current.shared.clone()).await {
                    state.directory.topics.remove(&topic);
                    tracing::error!(%topic, error = %e, "topic restart failed; it will start again on the next publish");
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.by_actor.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<TopicSupervisorMessage>,
        state: &mut TopicSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        state.directory.topics.clear();
        Ok(())
    }
}
