//! The `TopicSupervisor` actor: starts, restarts and reaps topics (and their actors),
//! and owns the subscription index.
//!
//! Every change to which topics exist and who subscribes to what goes through this one
//! actor, so topic creation and subscription can never race: a topic started after a
//! subscription resolves it from the index; a subscription added after a topic started
//! is sent to it. Publishers only read the directory this actor writes.
//!
//! A topic that nothing in the index matches starts asleep, without an incarnation (see
//! the directory); the first matching subscription wakes it: its gate is closed to
//! publishers and an incarnation started, with the subscription among its subscribers,
//! before the subscription is acknowledged. An incarnation's actor is started later,
//! when the incarnation first needs it (see `actors::topic`): `StartActor`.
//!
//! ## Supervision
//!
//! Supervises every `Topic` actor (linked at spawn) and every incarnation's fan-outs (a
//! fan-out that panics in a publisher's task reports `Failed`). A topic that fails
//! either way is restarted at once with the same shared state, so its sequence,
//! retained value and admission carry on; the incarnation it replaces is retired
//! first, and the batches that died with it (queued, or in the fan-out that failed)
//! are counted and reported to subscribers as a gap by the new incarnation. A topic
//! that stops normally (reaped, or put to sleep) is only forgotten.
//!
//! # Invariants
//!
//! - The directory holds at most one entry per topic name, and that entry's incarnation
//!   is the newest; `by_actor` maps every live topic actor to its topic and incarnation,
//!   and only an incarnation still in the directory gets an actor.
//! - A failed topic is restarted at once with the same shared state (sequence, retained
//!   value, admission) and its subscriber set rebuilt from the index.
//! - A topic is reaped only when nothing matches it in the index, it holds no retained
//!   value, it has been idle for `topics.idle_timeout_ms`, and its admission could be
//!   closed with no live permit; so reaping never loses an admitted message.
//! - A topic is asleep (no incarnation, gate `Asleep`) only while nothing in the index matches
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
use crate::actors::topic::{TopicActor, TopicCore, TopicSnapshot};
use crate::admission::Admission;
use crate::budget::MemoryBudget;
use crate::directory::{Directory, Gate, TopicRef, TopicShared};
use crate::error::BusError;
use crate::index::SubscriptionIndex;
use crate::subscription::{Subscriber, SubscriptionId};

/// What the topic supervisor is asked to do.
pub(crate) enum TopicSupervisorMessage {
    /// Return the live incarnation of `topic`, starting it if needed. `stale` names an
    /// incarnation the caller saw refuse a batch, to be replaced if it is still the
    /// current one.
    Ensure {
        topic: Topic,
        stale: Option<u64>,
        reply: RpcReplyPort<Result<TopicRef, BusError>>,
    },
    /// An incarnation needs its actor (a stall, batches left queued, a test's crash):
    /// start it, unless the incarnation is over.
    StartActor { core: Arc<TopicCore> },
    /// A fan-out of `topic`'s incarnation `incarnation` panicked (in a publisher's task
    /// or its actor); the incarnation is retired: restart the topic.
    Failed {
        topic: Topic,
        incarnation: u64,
        reason: String,
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
    /// The supervisor's own counters and, with `detail`, a snapshot of every live topic,
    /// read under each topic's short locks in the same step as the counters, so the two
    /// agree (without it, the list is empty: a metrics scrape only needs the counts).
    Observe {
        detail: bool,
        reply: RpcReplyPort<ObservedTopics>,
    },
}

/// What the topic supervisor answers to `Observe`.
pub(crate) type ObservedTopics = (Vec<TopicSnapshot>, TopicSupervisorSnapshot);

/// Counters of the topic supervisor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicSupervisorSnapshot {
    /// Live topics, asleep or awake.
    pub topics: usize,
    /// Live topics asleep (nothing subscribes to them).
    pub topics_asleep: usize,
    /// Topic actors running: awake topics that needed one (a stalled subscriber's
    /// room, batches left queued while the state was held) and have not been idle for
    /// a whole sweep period since.
    pub topic_actors: usize,
    /// Topic actors started, in total.
    pub topic_actors_started: u64,
    /// Subscriptions in the index.
    pub subscriptions: usize,
    /// Deliveries waiting in every subscription's buffer.
    pub buffered_messages: usize,
    /// Payload and header bytes of those deliveries.
    pub buffered_bytes: usize,
    /// Topics restarted after a failure, in total.
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
    /// Live topic actors by actor id (the key supervision events carry) to their topic
    /// and incarnation.
    by_actor: HashMap<ActorId, (Topic, u64)>,
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
    /// Starts (or restarts) an incarnation of a topic, with every matching
    /// subscription, and puts it in the directory. The gate is closed to publishers
    /// stamping asleep first, so the incarnation stamps every publish that follows.
    fn spawn(&mut self, shared: Arc<TopicShared>) -> TopicRef {
        *shared.gate.lock() = Gate::Awake;
        // The incarnation being replaced (failed, or refusing publishers) takes no more
        // batches; what it still held counts as lost, for the new one to report.
        if let Some(old) = self.directory.topics.get(&shared.name).and_then(|r| r.awake.clone()) {
            old.retire();
            old.stop_actor();
        }
        // A topic put to sleep kept its admission closed; a restart finds it open.
        shared.admission.reopen();
        let mut matches = Vec::new();
        self.index.matches(&shared.name, &mut matches);
        let core = TopicCore::start(
            shared.clone(),
            self.directory.clone(),
            matches.into_iter().map(|(_, s)| s).collect(),
        );
        let topic_ref = TopicRef {
            shared,
            awake: Some(core),
        };
        self.directory
            .topics
            .insert(topic_ref.shared.name.clone(), topic_ref.clone());
        topic_ref
    }

    /// Starts the actor of an incarnation that needs one, linked to this supervisor;
    /// an incarnation that is over (replaced, failed, put to sleep) gets none.
    async fn start_actor(&mut self, myself: &ActorRef<TopicSupervisorMessage>, core: Arc<TopicCore>) {
        let current = self
            .directory
            .topics
            .get(&core.shared.name)
            .is_some_and(|r| r.awake.as_ref().is_some_and(|c| Arc::ptr_eq(c, &core)));
        if !current || core.is_retired() {
            core.stop_actor();
            return;
        }
        match Actor::spawn_linked(None, TopicActor, core.clone(), myself.get_cell()).await {
            Ok((actor, _join)) => {
                self.counters.topic_actors_started += 1;
                self.by_actor
                    .insert(actor.get_id(), (core.shared.name.clone(), core.id));
            }
            Err(e) => {
                // What waited for the actor cannot be resumed: the topic restarts, and
                // what the incarnation held is reported as lost.
                let reason = format!("starting the topic's actor: {e}");
                self.restart(core.shared.name.clone(), core.id, &reason);
            }
        }
    }

    /// Restarts `topic` after its incarnation `incarnation` failed, unless a publisher
    /// already had that incarnation replaced.
    fn restart(&mut self, topic: Topic, incarnation: u64, reason: &str) {
        let Some(current) = self.directory.topics.get(&topic).map(|r| r.clone()) else {
            return;
        };
        current.shared.restarts.fetch_add(1, Ordering::Relaxed);
        self.counters.topic_restarts += 1;
        tracing::warn!(%topic, error = %reason, "topic failed; restarting");
        if current.awake.as_ref().map(|c| c.id) == Some(incarnation) {
            self.spawn(current.shared.clone());
        }
    }

    /// The live incarnation of `topic`: the current one, or a successor if it is retired
    /// or is `stale` (the caller saw it refuse a message), or a new topic within
    /// `max_topics`.
    fn ensure(&mut self, topic: Topic, stale: Option<u64>) -> Result<TopicRef, BusError> {
        let shared = match self.directory.topics.get(&topic).map(|r| r.clone()) {
            Some(r) => {
                // An entry asleep is always current: this actor wakes a topic and
                // updates its entry in one step.
                let Some(core) = &r.awake else {
                    return Ok(r);
                };
                if !core.is_retired() && Some(core.id) != stale {
                    return Ok(r);
                }
                // Failed, or refusing messages: start its successor now, with the same
                // shared state (the directory only ever holds open admissions: a reap
                // closes and removes in one step). If its failure report is still
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
        Ok(self.spawn(shared))
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

    /// Stops the topic actors that did nothing since the last sweep (see
    /// `TopicCore::stop_idle_actor`). Reaps the topics nothing matches that have been
    /// idle for `topics.idle_timeout_ms` and hold no retained value, and puts to sleep
    /// the other awake topics nothing matches (their subscribers left while publishers
    /// go on, or they hold a retained value): their incarnation (and its actor, if it
    /// has one) ends, and the topic keeps its sequence and retained value asleep. Either
    /// happens only once the topic's admission is closed with no permit out, so nothing
    /// admitted is in its mailbox.
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
            // An actor idle for a whole sweep period goes (its topic stays awake).
            if let Some(core) = &r.awake {
                core.stop_idle_actor();
            }
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
            if let Some(core) = &r.awake {
                // Its admission is closed with no permit out, so it holds no batch.
                core.retire();
                core.stop_actor();
            }
            if reap {
                self.directory.topics.remove(&r.shared.name);
                self.counters.topics_reaped += 1;
            } else {
                // Asleep, the admission stays closed: a publisher still holding the
                // incarnation is refused there and comes back for this entry.
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
    fn subscribe(&mut self, sub: Arc<Subscriber>) {
        self.by_session.entry(sub.session).or_default().insert(sub.id);
        self.index.insert(sub.id, sub.filter.clone(), sub.clone());
        if let Some(interest) = &self.directory.interest
            && !sub.local_only
        {
            interest.add(sub.interest_key());
        }
        let mut asleep = Vec::new();
        self.for_each_match(&sub.filter, |r| match &r.awake {
            Some(core) => core.add(sub.clone()),
            None => asleep.push(r.shared.clone()),
        });
        for shared in asleep {
            self.spawn(shared);
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
            if let Some(core) = &r.awake {
                core.remove(id);
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
                let _ = reply.send(state.ensure(topic, stale));
            }
            TopicSupervisorMessage::StartActor { core } => state.start_actor(&myself, core).await,
            TopicSupervisorMessage::Failed {
                topic,
                incarnation,
                reason,
            } => state.restart(topic, incarnation, &reason),
            TopicSupervisorMessage::Subscribe { subscriber, reply } => {
                state.subscribe(subscriber);
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
                let (mut topics, mut sleeping) = (Vec::new(), 0);
                for r in state.directory.topics.iter() {
                    sleeping += usize::from(r.awake.is_none());
                    if detail {
                        topics.push(match &r.awake {
                            Some(core) => core.snapshot(),
                            None => r.shared.snapshot(),
                        });
                    }
                }
                let mut counters = state.counters.clone();
                counters.topics = state.directory.topics.len();
                counters.topics_asleep = sleeping;
                counters.topic_actors = state.by_actor.len();
                counters.subscriptions = state.index.len();
                // One short lock per subscription buffer, no actor call.
                for subscriber in state.index.values() {
                    let (messages, bytes) = subscriber.queue.depth();
                    counters.buffered_messages += messages;
                    counters.buffered_bytes += bytes;
                }
                let _ = reply.send((topics, counters));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<TopicSupervisorMessage>,
        event: SupervisionEvent,
        state: &mut TopicSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((topic, incarnation)) = state.by_actor.remove(&cell.get_id()) {
                    state.restart(topic, incarnation, &err.to_string());
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
        // Incarnations that never needed an actor end here (those that had one already
        // did, in its stop).
        for r in state.directory.topics.iter() {
            if let Some(core) = &r.awake {
                core.abandon();
            }
        }
        state.directory.topics.clear();
        Ok(())
    }
}
