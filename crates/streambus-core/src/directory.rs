//! The topic directory: how a publisher finds a topic actor and hands it a batch.
//!
//! Live topics are kept in a sharded concurrent map (no global lock on the hot path).
//! Only the topic supervisor writes it; publishers read it and, on a miss or a dead
//! actor, ask the supervisor to start (or restart) the topic, which serializes topic
//! creation with subscription changes.
//!
//! A publish to one topic goes: look the topic up, take an admission [`Permit`] for the
//! batch (waiting, or failing at once for `try_publish`), cast the batch with the permit
//! inside to the topic actor. A closed admission (the topic is being reaped) or a dead
//! actor sends the publisher back to the supervisor, and the batch is retried with the
//! new actor; a batch handed back by a failed cast is never lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::Mutex;
use ractor::{ActorId, ActorRef, ActorStatus, MessagingErr};
use streambus_types::{Delivery, Message, Topic};

use crate::actors::topic::{PublishBatch, TopicMessage};
use crate::actors::topic_supervisor::TopicSupervisorMessage;
use crate::admission::{Admission, AdmissionClosed, InflightGuard};
use crate::budget::MemoryBudget;
use crate::error::{BusError, answered};
use crate::receipt::ReceiptToken;

/// How many times a publish is re-routed (topic reaped or restarted under it) before it
/// gives up with an internal error. Each re-route goes through the supervisor, which
/// settles the topic, so more than two means something is badly wrong.
const MAX_REROUTES: usize = 8;

/// State of one topic that outlives its actor: a restarted or re-spawned actor for the
/// same name gets the same sequence counter, retained value and admission.
#[derive(Debug)]
pub(crate) struct TopicShared {
    /// The topic.
    pub(crate) name: Topic,
    /// The topic's mailbox bound, shared with every publisher.
    pub(crate) admission: Arc<Admission>,
    /// Next sequence number to assign; only the live topic actor advances it.
    pub(crate) next_sequence: AtomicU64,
    /// The retained delivery, if any.
    pub(crate) retained: Mutex<Option<Delivery>>,
    /// Milliseconds since the directory's epoch of the last handled publish.
    pub(crate) last_active_ms: AtomicU64,
    /// Times the actor was restarted after a failure.
    pub(crate) restarts: AtomicU32,
    /// Messages lost in crashes that have already been reported to subscribers as gaps.
    pub(crate) lost_reported: AtomicU64,
}

/// What the directory holds per live topic.
#[derive(Debug, Clone)]
pub(crate) struct TopicRef {
    /// The state that outlives the actor (and its admission, which publishers take).
    pub(crate) shared: Arc<TopicShared>,
    /// The topic actor. Publishers cast [`TopicMessage::Publish`]; a failed cast means
    /// the actor died and the supervisor must be asked for its successor.
    pub(crate) actor: ActorRef<TopicMessage>,
}

impl TopicRef {
    fn alive(&self) -> bool {
        matches!(self.actor.get_status(), ActorStatus::Starting | ActorStatus::Running)
    }
}

/// What a batch carries beside its messages.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BatchTags<'a> {
    /// A durable publish's receipt.
    pub(crate) receipt: Option<&'a Arc<ReceiptToken>>,
    /// Relayed from another node: whom it is for.
    pub(crate) relay: Option<&'a crate::Relay>,
}

/// Whether a publish waits for admission or fails at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Wait,
    Try,
}

/// The map of live topics and the route to the supervisor.
#[derive(Debug)]
pub(crate) struct Directory {
    /// Live topics. Written only by the supervisor (start, restart, reap); read by
    /// every publisher, sharded so that readers of different topics never contend.
    pub(crate) topics: DashMap<Topic, TopicRef>,
    /// Where misses and dead actors are resolved; calls only, answered promptly.
    pub(crate) supervisor: ActorRef<TopicSupervisorMessage>,
    /// Origin of [`Directory::now_ms`].
    epoch: Instant,
    /// On a federated bus, the local interest the backplane follows; topics then also
    /// record which queue groups they served.
    pub(crate) interest: Option<Arc<crate::federation::Interest>>,
}

impl Directory {
    pub(crate) fn new(supervisor: ActorRef<TopicSupervisorMessage>, federated: bool) -> Self {
        Directory {
            topics: DashMap::new(),
            supervisor,
            epoch: Instant::now(),
            interest: federated.then(Default::default),
        }
    }

    /// Milliseconds since the directory was made (a monotonic clock for idleness).
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn lookup(&self, topic: &Topic, stale: Option<ActorId>) -> Result<TopicRef, BusError> {
        if let Some(r) = self.topics.get(topic)
            && Some(r.actor.get_id()) != stale
            && r.alive()
        {
            return Ok(r.clone());
        }
        let topic = topic.clone();
        answered(
            self.supervisor
                .call(|reply| TopicSupervisorMessage::Ensure { topic, stale, reply }, None)
                .await,
        )?
    }

    /// Hands `messages` (all for `topic`, within the batch limit) to the topic actor.
    ///
    /// On [`BusError::Full`] the messages not admitted are handed back inside the error;
    /// the ones before them were admitted and will be delivered.
    pub(crate) async fn send(
        &self,
        topic: &Topic,
        mut messages: Vec<Message>,
        admit: Admit,
        budget: &Arc<MemoryBudget>,
        guards: impl Fn() -> [InflightGuard; 2],
        tags: BatchTags<'_>,
    ) -> Result<(), BusError> {
        let BatchTags { receipt, relay } = tags;
        let mut stale = None;
        let mut reroutes = 0;
        while !messages.is_empty() {
            let target = self.lookup(topic, stale).await?;
            let admission = &target.shared.admission;
            // Take the longest prefix that fits in the topic's whole capacity and in the
            // bus's whole budget.
            let (mut n, mut bytes) = (0, 0);
            for m in &messages {
                let len = m.byte_len();
                let over = n + 1 > admission.capacity_messages()
                    || bytes + len > admission.capacity_bytes()
                    || MemoryBudget::cost(n + 1, bytes + len) > budget.capacity();
                if n > 0 && over {
                    break;
                }
                n += 1;
                bytes += len;
            }
            let permit = match admit {
                Admit::Wait => admission.acquire(n, bytes).await.map(Some),
                Admit::Try => admission.try_acquire(n, bytes),
            };
            let mut permit = match permit {
                Ok(Some(p)) => p,
                Ok(None) => return Err(BusError::Full(messages)),
                Err(AdmissionClosed) => {
                    reroutes += 1;
                    if reroutes > MAX_REROUTES {
                        return Err(BusError::Internal(format!(
                            "topic {topic} kept closing under the publisher"
                        )));
                    }
                    stale = Some(target.actor.get_id());
                    continue;
                }
            };
            // Then the bus-wide budget (see `budget`): waiting for it while holding the
            // topic's permit cannot deadlock, since fan-outs free it.
            let cost = MemoryBudget::cost(n, bytes);
            let share = match admit {
                Admit::Wait => budget.take(cost).await,
                Admit::Try => match budget.try_take(cost) {
                    Some(share) => share,
                    None => return Err(BusError::Full(messages)),
                },
            };
            permit.hold(share);
            let rest = messages.split_off(n);
            permit.mark_sent();
            let batch = PublishBatch {
                messages,
                permit,
                _guards: guards(),
                receipt: receipt.map(|r| r.sibling(1)),
                relay: relay.cloned(),
            };
            match target.actor.cast(TopicMessage::Publish(batch)) {
                Ok(()) => messages = rest,
                Err(MessagingErr::SendErr(TopicMessage::Publish(mut batch))) => {
                    batch.permit.mark_unsent();
                    messages = std::mem::take(&mut batch.messages);
                    messages.extend(rest);
                    reroutes += 1;
                    if reroutes > MAX_REROUTES {
                        return Err(BusError::Internal(format!(
                            "topic {topic} actor is not accepting messages"
                        )));
                    }
                    stale = Some(target.actor.get_id());
                }
                Err(_) => return Err(BusError::Internal("unexpected messaging error".into())),
            }
        }
        Ok(())
    }
}

impl TopicShared {
    pub(crate) fn new(name: Topic, admission: Arc<Admission>, now_ms: u64) -> Arc<Self> {
        Arc::new(TopicShared {
            name,
            admission,
            next_sequence: AtomicU64::new(1),
            retained: Mutex::new(None),
            last_active_ms: AtomicU64::new(now_ms),
            restarts: AtomicU32::new(0),
            lost_reported: AtomicU64::new(0),
        })
    }

    /// Messages lost in crashes and not yet reported as gaps; marks them reported.
    pub(crate) fn take_unreported_loss(&self) -> u64 {
        let lost = self.admission.lost();
        let reported = self.lost_reported.swap(lost, Ordering::AcqRel);
        lost.saturating_sub(reported)
    }
}
