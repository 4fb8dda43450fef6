//! The `Topic` actor: one per concrete topic; stamps, retains and fans out.
//!
//! A topic receives publish batches (each carrying its admission permit), assigns each
//! message the next sequence number and the publish time, turns the batch into one shared
//! `Arc<[Delivery]>`, and pushes it to every plain subscriber's buffer and to one member
//! per queue group.
//!
//! A `block` subscriber whose buffer is full stalls the topic without stalling the actor:
//! the unpushed remainder is parked, later publish batches wait in a backlog (bounded by
//! the admission, since each still holds its permit), and the subscriber's buffer sends
//! `Resume` when it has room. Meanwhile the actor keeps answering `Observe` and
//! subscription changes, and publishers feel the backpressure through the admission.
//!
//! # Invariants
//!
//! - Sequence numbers are assigned in mailbox order, so per-publisher order is kept.
//! - While anything is parked, no new batch is fanned out (the backlog is FIFO).
//! - A batch's permit is completed only when every subscriber has it (or is gone), so
//!   the admission counts exactly what is not yet in subscriber buffers.
//! - Messages lost to a crash of this actor (their permits dropped unhandled) are
//!   reported to every subscriber as a gap by the next incarnation, with fresh sequence
//!   numbers reserved for them.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use streambus_types::{CloseReason, Delivery, Gap, Message, Topic};

use crate::actors::topic_supervisor::TopicSupervisorMessage;
use crate::admission::{InflightGuard, Permit};
use crate::directory::{Directory, TopicShared};
use crate::federation::Relay;
use crate::queue::Push;
use crate::receipt::ReceiptToken;
use crate::subscription::{Subscriber, SubscriptionId};

/// A batch of messages for one topic, with the admission it holds.
#[derive(Debug)]
pub(crate) struct PublishBatch {
    /// The messages, all of this topic, in publish order.
    pub(crate) messages: Vec<Message>,
    /// Returned when every subscriber has the batch, with the batch's share of the
    /// bus-wide memory budget.
    pub(crate) permit: Permit,
    /// The publishing session's and the bus's in-flight counts; dropped with the permit.
    pub(crate) _guards: [InflightGuard; 2],
    /// A durable publish: confirmed when the batch is in every subscriber buffer, and
    /// the source of each durable sink subscriber's share.
    pub(crate) receipt: Option<Arc<ReceiptToken>>,
    /// Relayed from another node: whom it is for. `None`: published on this node.
    pub(crate) relay: Option<Relay>,
}

impl PublishBatch {
    /// Every subscriber has the batch: return the admission, confirm the fan-out.
    fn complete(self) {
        if let Some(r) = &self.receipt {
            r.confirm(1);
        }
        self.permit.complete();
    }
}

/// What a topic actor is asked to do.
#[derive(Debug)]
pub(crate) enum TopicMessage {
    /// Stamp and fan out a batch (from a publisher, through the directory).
    Publish(PublishBatch),
    /// A new matching subscription (from the supervisor).
    AddSubscriber(Arc<Subscriber>),
    /// A subscription went away (from the supervisor).
    RemoveSubscriber(SubscriptionId),
    /// A blocked subscriber's buffer has room again (from its space waker).
    Resume,
    /// Report state.
    Observe(RpcReplyPort<TopicSnapshot>),
    /// Fault injection for supervision tests.
    #[cfg(feature = "testsuite")]
    Crash,
}

/// A point-in-time view of one topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopicSnapshot {
    /// The topic.
    pub topic: Topic,
    /// Plain subscribers.
    pub subscribers: usize,
    /// Queue groups and their member counts.
    pub queue_groups: Vec<(String, usize)>,
    /// Messages fanned out since the topic (name) was first started.
    pub published: u64,
    /// The next sequence number.
    pub next_sequence: u64,
    /// Messages admitted and not yet in every subscriber's buffer.
    pub mailbox_messages: usize,
    /// Bytes admitted and not yet in every subscriber's buffer.
    pub mailbox_bytes: usize,
    /// Admission capacity in messages.
    pub mailbox_capacity_messages: usize,
    /// Admission capacity in bytes.
    pub mailbox_capacity_bytes: usize,
    /// Batches waiting behind a stalled `block` subscriber.
    pub backlog_batches: usize,
    /// `block` subscribers the topic is waiting for.
    pub stalled_subscribers: usize,
    /// Whether a retained message is held.
    pub retained: bool,
    /// Restarts after a failure.
    pub restarts: u32,
    /// Messages lost in crashes (reported to subscribers as gaps).
    pub lost_in_crashes: u64,
    /// Nothing subscribes to it: it has no actor, and its publishers stamp their
    /// messages themselves (see the directory).
    pub asleep: bool,
}

/// Arguments of a topic actor, given by the topic supervisor.
pub(crate) struct TopicArgs {
    /// The state that outlives incarnations (sequence, retained value, admission); a
    /// restarted actor gets the same one.
    pub(crate) shared: Arc<TopicShared>,
    /// Every subscription in the index that matches the topic when it starts; later
    /// ones arrive as `AddSubscriber`.
    pub(crate) subscribers: Vec<Arc<Subscriber>>,
    /// The directory, for the clock (idleness) and the supervisor's address (to report
    /// subscribers that ended during a fan-out).
    pub(crate) directory: Arc<Directory>,
}

/// A queue group as one topic sees it: its members that match this topic.
#[derive(Debug)]
struct Group {
    /// The group's name, shared with its subscribers' options.
    name: Arc<str>,
    /// Members in arrival order; closed ones are dropped at the next fan-out.
    members: Vec<Arc<Subscriber>>,
    /// Round-robin position: the member that gets the next message.
    next: usize,
}

/// A part of a batch a `block` subscriber has not taken yet.
struct Parked {
    /// The full subscriber; its buffer's space waker sends `Resume`.
    subscriber: Arc<Subscriber>,
    /// The batch (or group share) being fanned out, shared with those who have it.
    batch: Arc<[Delivery]>,
    /// The part of `batch` this subscriber still has to take.
    range: Range<usize>,
    /// The subscriber's share of a durable receipt, confirmed as it takes the rest.
    receipt: Option<Arc<ReceiptToken>>,
}

/// State of a topic actor.
pub(crate) struct TopicState {
    /// See [`TopicArgs::shared`].
    shared: Arc<TopicShared>,
    /// See [`TopicArgs::directory`].
    directory: Arc<Directory>,
    /// Subscribers without a queue group: each gets every message.
    plain: Vec<Arc<Subscriber>>,
    /// Queue groups: each message goes to one member of each.
    groups: Vec<Group>,
    /// Remainders that `block` subscribers could not take yet. While it is not empty
    /// nothing new is fanned out.
    parked: Vec<Parked>,
    /// The batch whose fan-out is parked: its permit (and receipt) is completed only
    /// when every parked remainder is taken.
    parked_batch: Option<PublishBatch>,
    /// Publish batches that arrived while a fan-out was parked, in mailbox order. Each
    /// still holds its admission permit, so the backlog is bounded by the admission.
    backlog: VecDeque<PublishBatch>,
    /// Subscribers whose buffer closed during a fan-out; removed right after it.
    ended: Vec<SubscriptionId>,
    /// The topic's span (its name): the parent of its logs.
    span: tracing::Span,
}

/// The topic actor.
pub(crate) struct TopicActor;

/// Where each new group's round robin starts, so that topics carrying a message or two
/// each (one per device, say) do not all pick the group's first member.
static GROUP_SEED: AtomicUsize = AtomicUsize::new(0);

impl TopicState {
    fn add(&mut self, sub: Arc<Subscriber>, myself: &ActorRef<TopicMessage>) {
        if sub.queue.is_closed() || self.contains(sub.id) {
            return;
        }
        match &sub.group {
            None => {
                let retained = self.shared.retained.lock().clone();
                if let Some(retained) = retained {
                    let batch: Arc<[Delivery]> = Arc::from(vec![retained]);
                    self.push(&sub, &batch, 0..1, None, myself);
                }
                self.plain.push(sub);
            }
            Some(name) => match self.groups.iter_mut().find(|g| &g.name == name) {
                Some(g) => g.members.push(sub),
                None => self.groups.push(Group {
                    name: name.clone(),
                    members: vec![sub],
                    next: GROUP_SEED.fetch_add(1, Ordering::Relaxed),
                }),
            },
        }
    }

    fn contains(&self, id: SubscriptionId) -> bool {
        self.plain.iter().any(|s| s.id == id) || self.groups.iter().any(|g| g.members.iter().any(|s| s.id == id))
    }

    fn remove(&mut self, id: SubscriptionId) {
        self.plain.retain(|s| s.id != id);
        for g in &mut self.groups {
            g.members.retain(|s| s.id != id);
        }
        self.groups.retain(|g| !g.members.is_empty());
        self.parked.retain(|p| {
            if p.subscriber.id != id {
                return true;
            }
            // Counted so a subscription closed under a stalled topic (shutdown past its
            // drain timeout) shows what it never received.
            p.subscriber.queue.count_lost(p.range.len());
            false
        });
    }

    /// Pushes to one subscriber and records what its policy made of it.
    fn push(
        &mut self,
        sub: &Arc<Subscriber>,
        batch: &Arc<[Delivery]>,
        range: Range<usize>,
        receipt: Option<Arc<ReceiptToken>>,
        myself: &ActorRef<TopicMessage>,
    ) {
        let start = range.start;
        let end = range.end;
        let outcome = sub.queue.push(batch, range, receipt.as_ref(), || {
            let me = myself.clone();
            Box::new(move || {
                // The topic may be gone by now; then there is nothing to resume.
                let _ = me.cast(TopicMessage::Resume);
            })
        });
        match outcome {
            Push::Done => {}
            Push::Blocked { accepted } => self.parked.push(Parked {
                subscriber: sub.clone(),
                batch: batch.clone(),
                range: start + accepted..end,
                receipt,
            }),
            Push::Disconnected => {
                tracing::warn!(parent: &self.span, subscription = sub.id.0, "slow consumer disconnected");
                self.subscriber_ended(sub, CloseReason::SlowConsumer);
            }
            Push::Closed => self.subscriber_ended(sub, CloseReason::Unsubscribed),
        }
    }

    /// A subscriber's buffer ended during a push: it is removed after the current
    /// fan-out, and the supervisor is told (by a cast, so the topic never waits on it)
    /// to drop it from the index and every other topic.
    fn subscriber_ended(&mut self, sub: &Arc<Subscriber>, reason: CloseReason) {
        self.ended.push(sub.id);
        let _ = self.directory.supervisor.cast(TopicSupervisorMessage::Unsubscribe {
            ids: vec![sub.id],
            reason,
            reply: None,
        });
    }

    /// Stamps a batch and fans it out; parks it if a `block` subscriber is full.
    fn fan_out(&mut self, mut publish: PublishBatch, myself: &ActorRef<TopicMessage>) {
        // Whom the batch is for: everyone, or (relayed from another node) the plain
        // subscribers or one group. Relayed batches never reach `local_only` ones.
        let (relayed, only_group) = match publish.relay.take() {
            None => (false, None),
            Some(Relay::Plain) => (true, None),
            Some(Relay::Group(g)) => (true, Some(g)),
            Some(Relay::Lost { count, group }) => {
                self.report_relay_loss(count, group);
                publish.complete();
                return;
            }
            Some(Relay::Retain) => {
                self.shared.retain_relayed(&publish.messages);
                self.shared
                    .last_active_ms
                    .store(self.directory.now_ms(), Ordering::Relaxed);
                publish.complete();
                return;
            }
        };
        // On a federated bus, what this node serves its own publishes' groups with, so
        // that the other nodes leave those groups alone.
        let groups_served = match (&self.directory.interest, relayed) {
            (Some(_), false) => {
                let served: Vec<Arc<str>> = self
                    .groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| !m.queue.is_closed()))
                    .map(|g| g.name.clone())
                    .collect();
                (!served.is_empty()).then(|| Arc::<[Arc<str>]>::from(served))
            }
            _ => None,
        };
        let messages = std::mem::take(&mut publish.messages);
        let (first, base_ns) = self.shared.stamp(messages.len() as u64);
        // Collected straight into the shared slice: one allocation, no copy.
        let batch: Arc<[Delivery]> = messages
            .into_iter()
            .zip(first..)
            .map(|(m, sequence)| {
                let timestamp_ns = base_ns + (sequence - first);
                // A group's relayed copy is not the topic's value here: the plain
                // relay (or the retained stream) brings that.
                if m.retain && only_group.is_none() {
                    self.shared.retain(&m, sequence, timestamp_ns);
                }
                Delivery {
                    topic: m.topic,
                    sequence,
                    timestamp_ns,
                    payload: m.payload,
                    headers: m.headers,
                    retained: false,
                    retain: m.retain,
                    groups_served: groups_served.clone(),
                }
            })
            .collect();
        self.shared
            .last_active_ms
            .store(self.directory.now_ms(), Ordering::Relaxed);
        let len = batch.len();

        let plain = std::mem::take(&mut self.plain);
        for sub in plain
            .iter()
            .filter(|s| only_group.is_none() && !(relayed && s.local_only))
        {
            let share = match &publish.receipt {
                Some(r) if sub.durable => Some(r.sibling(len)),
                _ => None,
            };
            self.push(sub, &batch, 0..len, share, myself);
        }
        // `push` may not add subscribers, only report ended ones to the supervisor.
        self.plain = plain;

        let mut groups = std::mem::take(&mut self.groups);
        for group in &mut groups {
            let wanted = match &only_group {
                None => !relayed,
                Some(name) => &group.name == name,
            };
            if wanted {
                self.fan_out_group(group, &batch, myself);
            }
        }
        self.groups = groups;

        for id in std::mem::take(&mut self.ended) {
            self.remove(id);
        }
        if self.parked.is_empty() {
            publish.complete();
        } else {
            self.parked_batch = Some(publish);
        }
    }

    /// Each message goes to one live member, round robin. One member takes the batch as
    /// it is; several get shares, each its own shared slice, so that no member holds
    /// another's messages.
    fn fan_out_group(&mut self, group: &mut Group, batch: &Arc<[Delivery]>, myself: &ActorRef<TopicMessage>) {
        group.members.retain(|m| !m.queue.is_closed());
        let members = group.members.len();
        if members == 0 {
            return;
        }
        if members == 1 {
            let member = group.members[0].clone();
            self.push(&member, batch, 0..batch.len(), None, myself);
            return;
        }
        let mut shares: Vec<Vec<Delivery>> = vec![Vec::new(); members];
        for (i, d) in batch.iter().enumerate() {
            shares[(group.next + i) % members].push(d.clone());
        }
        group.next = (group.next + batch.len()) % members;
        for (member, share) in group.members.clone().iter().zip(shares) {
            if !share.is_empty() {
                let share: Arc<[Delivery]> = share.into();
                let len = share.len();
                self.push(member, &share, 0..len, None, myself);
            }
        }
    }

    /// Retries parked remainders; once none is left, completes the parked batch and
    /// works through the backlog until the next stall.
    fn resume(&mut self, myself: &ActorRef<TopicMessage>) {
        for parked in std::mem::take(&mut self.parked) {
            self.push(&parked.subscriber, &parked.batch, parked.range, parked.receipt, myself);
        }
        for id in std::mem::take(&mut self.ended) {
            self.remove(id);
        }
        while self.parked.is_empty() {
            if let Some(done) = self.parked_batch.take() {
                done.complete();
            }
            match self.backlog.pop_front() {
                Some(next) => self.fan_out(next, myself),
                None => break,
            }
        }
    }

    /// A gap of `lost` (at least one) messages that never got sequence numbers: a fresh
    /// range is reserved for them, so the gap says exactly how many and the sequence
    /// stays dense for everyone.
    fn reserve_gap(&self, lost: u64) -> Gap {
        let first = self.shared.next_sequence.fetch_add(lost, Ordering::AcqRel);
        Gap {
            topic: self.shared.name.clone(),
            dropped: lost,
            first_sequence: first,
            last_sequence: first + lost - 1,
        }
    }

    /// Reports messages lost in a previous incarnation's crash to every subscriber.
    ///
    /// The loss has no sequence numbers of its own (the batches died unstamped), so it
    /// gets a fresh range, reserved now: the gap then says exactly how many, and the
    /// sequence stays dense for everyone.
    fn report_crash_loss(&mut self) {
        let lost = self.shared.take_unreported_loss();
        if lost == 0 {
            return;
        }
        let gap = self.reserve_gap(lost);
        tracing::error!(parent: &self.span, lost, "messages lost in a topic crash, reported to subscribers as a gap");
        for sub in self
            .plain
            .iter()
            .chain(self.groups.iter().flat_map(|g| g.members.iter()))
        {
            sub.queue.push_gap(gap.clone());
        }
    }

    /// Reports `count` messages another node published on this topic, and this node
    /// never received, to the subscribers they were for (outside groups, or `group`'s
    /// members), with fresh sequence numbers reserved for them as for a crash loss.
    fn report_relay_loss(&mut self, count: u64, group: Option<Arc<str>>) {
        if count == 0 {
            return;
        }
        let gap = self.reserve_gap(count);
        // The backplane logs these losses in summary; one line per gap would bury the log.
        tracing::debug!(parent: &self.span, lost = count, group = group.as_deref(), "messages lost on the cluster backplane, reported as a gap");
        let targets: Vec<&Arc<Subscriber>> = match &group {
            None => self.plain.iter().filter(|s| !s.local_only).collect(),
            Some(name) => self
                .groups
                .iter()
                .filter(|g| &g.name == name)
                .flat_map(|g| g.members.iter())
                .collect(),
        };
        for sub in targets {
            sub.queue.push_gap(gap.clone());
        }
    }

    fn snapshot(&self) -> TopicSnapshot {
        TopicSnapshot {
            subscribers: self.plain.len(),
            queue_groups: self
                .groups
                .iter()
                .map(|g| (g.name.to_string(), g.members.len()))
                .collect(),
            backlog_batches: self.backlog.len(),
            stalled_subscribers: self.parked.len(),
            ..self.shared.snapshot()
        }
    }
}

impl Actor for TopicActor {
    type Msg = TopicMessage;
    type State = TopicState;
    type Arguments = TopicArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TopicMessage>,
        args: TopicArgs,
    ) -> Result<TopicState, ActorProcessingErr> {
        let span = tracing::info_span!("topic", topic = %args.shared.name);
        let mut state = TopicState {
            shared: args.shared,
            directory: args.directory,
            plain: Vec::new(),
            groups: Vec::new(),
            parked: Vec::new(),
            parked_batch: None,
            backlog: VecDeque::new(),
            ended: Vec::new(),
            span,
        };
        for sub in args.subscribers {
            state.add(sub, &myself);
        }
        state.report_crash_loss();
        tracing::debug!(parent: &state.span, subscribers = state.plain.len(), "topic started");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<TopicMessage>,
        message: TopicMessage,
        state: &mut TopicState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TopicMessage::Publish(batch) => {
                if state.parked.is_empty() {
                    state.fan_out(batch, &myself);
                } else {
                    state.backlog.push_back(batch);
                }
            }
            TopicMessage::AddSubscriber(sub) => state.add(sub, &myself),
            TopicMessage::RemoveSubscriber(id) => {
                state.remove(id);
                state.resume(&myself);
            }
            TopicMessage::Resume => state.resume(&myself),
            TopicMessage::Observe(reply) => {
                let _ = reply.send(state.snapshot());
            }
            #[cfg(feature = "testsuite")]
            TopicMessage::Crash => panic!("injected topic crash"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TopicMessage>,
        state: &mut TopicState,
    ) -> Result<(), ActorProcessingErr> {
        let stranded: usize = state.parked.iter().map(|p| p.range.len()).sum::<usize>()
            + state.backlog.iter().map(|b| b.messages.len()).sum::<usize>();
        if stranded > 0 {
            for p in &state.parked {
                p.subscriber.queue.count_lost(p.range.len());
            }
            tracing::error!(parent: &state.span, stranded, "topic stopped with undelivered messages");
        }
        // Everything parked or backlogged is given up on here: complete the permits so
        // the loss is not counted twice as a crash loss.
        if let Some(b) = state.parked_batch.take() {
            b.permit.complete();
        }
        for b in state.backlog.drain(..) {
            b.permit.complete();
        }
        tracing::debug!(parent: &state.span, "topic stopped");
        Ok(())
    }
}
