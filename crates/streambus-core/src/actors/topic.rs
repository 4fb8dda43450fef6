//! A topic's fan-out state and the `Topic` actor that holds it over time: one
//! incarnation per concrete topic with subscribers; stamps, retains and fans out.
//!
//! A publish batch (carrying its admission permit) is given a sequence number and a
//! publish time per message, turned into one shared `Arc<[Delivery]>`, and pushed to
//! every plain subscriber's buffer and to one member per queue group.
//!
//! The fan-out state ([`TopicCore`]) sits behind a short lock that the publishers, the
//! supervisor and the topic's actor share. A publisher that finds nothing stalled
//! stamps and fans its batch out itself, under that lock: the hot path wakes no task of
//! the topic's. The actor is what holds the topic over time: when a `block`
//! subscriber's buffer is full, the unpushed remainder is parked, later publish batches
//! wait in a backlog (bounded by the admission, since each still holds its permit), and
//! the subscriber's buffer resumes the topic when it has room: in the task of the
//! consumer that made the room if the state is free, through the actor otherwise (see
//! `TopicCore::room`). Meanwhile
//! subscription changes go on, and publishers feel the backpressure through the
//! admission. The supervisor adds and removes subscribers under the same lock, so a
//! subscription is in the topic the moment it is acknowledged.
//!
//! # The actor starts when it is first needed
//!
//! Most topics never stall and are never contended (a device's own topic, a chat
//! stream's echo topic), so an actor of their own would only cost memory (about 7 KB:
//! ractor's task and channels) and a start per topic. An incarnation therefore starts
//! without one, and a stall alone does not start one: the subscriber's room resumes the
//! topic in place. The first message for it (a `Resume` when that room finds the state
//! held or more queued than one round takes, batches handed over while the state was
//! held, an injected crash) asks the
//! supervisor to start it, linked like any topic actor, and waits in the core until it
//! runs: the actor's start takes what waited, in order, before anything sent after.
//! The supervisor's sweep stops an actor that did nothing for a whole sweep period
//! while nothing is parked or queued (a burst of stalls does not leave thousands of
//! idle actors behind); the next need starts another. A failure in a publisher's
//! fan-out goes to the supervisor directly, whether or not an actor exists.
//!
//! # Invariants
//!
//! - Sequence numbers are assigned in the order batches take the lock, so
//!   per-publisher order is kept.
//! - While anything is parked, no new batch is fanned out (the backlog is FIFO).
//! - A batch's permit is completed only when every subscriber has it (or is gone), so
//!   the admission counts exactly what is not yet in subscriber buffers.
//! - Whatever is left queued or parked with no holder has asked for the actor, which
//!   resumes it: a message for the actor is never dropped while the incarnation lives.
//! - Once an incarnation is retired (replaced, failed, or put to sleep) its state takes
//!   no batch: a publisher holding it goes back to the directory. Messages lost to a
//!   failure (their permits dropped unhandled: parked, backlogged, or in a fan-out that
//!   panicked) are reported to every subscriber as a gap by the next incarnation, with
//!   fresh sequence numbers reserved for them.

use std::collections::VecDeque;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};
use ractor::{Actor, ActorProcessingErr, ActorRef};
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
    /// A blocked subscriber's buffer has room again while someone held the state (from
    /// its space waker), one left (from the supervisor), or batches were left queued
    /// while the state was held: go on with what is parked and the backlog.
    Resume,
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
    /// Batches queued: behind a stalled `block` subscriber, or handed over while the
    /// topic's fan-out was busy.
    pub backlog_batches: usize,
    /// `block` subscribers the topic is waiting for.
    pub stalled_subscribers: usize,
    /// Whether a retained message is held.
    pub retained: bool,
    /// Restarts after a failure.
    pub restarts: u32,
    /// Messages lost in crashes (reported to subscribers as gaps).
    pub lost_in_crashes: u64,
    /// Nothing subscribes to it: it has no fan-out state, and its publishers stamp
    /// their messages themselves (see the directory).
    pub asleep: bool,
    /// The topic's actor is running: something needed it (a stalled subscriber's room,
    /// batches left queued while the state was held); most topics never do.
    pub actor: bool,
}

/// Batches the actor (or the state's holder) fans out before it lets the state go; the
/// actor then sends itself `Resume` for the rest, so that one busy topic does not keep
/// its worker thread.
const DRAIN_ROUND: usize = 64;

/// Numbers incarnations, so that a publisher can name the one it saw refuse a batch.
static INCARNATIONS: AtomicU64 = AtomicU64::new(1);

/// Where an incarnation's actor is.
#[derive(Debug)]
enum ActorSlot {
    /// Nothing has needed one yet.
    Idle,
    /// Asked of the supervisor: the messages it is to take first, in order (at most one
    /// `Resume`).
    Starting(Vec<TopicMessage>),
    /// Started (it may have failed since: a message to it then goes nowhere, and the
    /// supervisor is replacing the incarnation).
    Running(ActorRef<TopicMessage>),
    /// The incarnation is over: its actor was stopped, or never started.
    Stopped,
}

/// One incarnation of a topic: its fan-out state, shared by its publishers, the
/// supervisor and its actor once it has one (see the module's documentation).
///
/// A publisher that finds the state free fans its batch out itself. One that finds it
/// held (another publisher, the actor, the supervisor) queues the batch in `pending`
/// and goes on: whoever holds the state looks at `pending` after letting it go, and
/// has the actor fan out what it finds there. `pending` is FIFO and a publisher's
/// batches enter it in order, so per-publisher order holds either way.
pub(crate) struct TopicCore {
    /// This incarnation's number (unique in the process).
    pub(crate) id: u64,
    /// The topic's state that outlives incarnations.
    pub(crate) shared: Arc<TopicShared>,
    /// The route to the supervisor (the actor's start, failures).
    directory: Arc<Directory>,
    /// This core, for the wakers it leaves in subscriber buffers (weak: a buffer must
    /// not keep a retired incarnation alive).
    me: Weak<TopicCore>,
    /// The fan-out state. Held only for work in memory (a fan-out, a subscription
    /// change, a snapshot); never across an await.
    state: Mutex<TopicState>,
    /// Batches waiting for the state: handed over while it was held, or while a
    /// `block` subscriber stalls the topic (the backlog). Each holds its admission
    /// permit, so the admission bounds it. Locked after `state` when both are.
    pending: Mutex<VecDeque<PublishBatch>>,
    /// This incarnation is over: it takes no batch. Set under both locks.
    retired: AtomicBool,
    /// The actor, started when first needed. Locked last, and alone.
    actor: Mutex<ActorSlot>,
    /// The actor worked (started, or resumed) since the supervisor's last sweep looked.
    worked: AtomicBool,
}

impl std::fmt::Debug for TopicCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicCore")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl TopicCore {
    /// A new incarnation of the topic `shared`, its subscribers those of `subscribers`
    /// (every matching subscription in the index; later ones are added by the
    /// supervisor). A plain subscriber gets the retained value first, and every one the
    /// gap of what an earlier incarnation lost. `directory` gives the clock (idleness)
    /// and the supervisor's address.
    pub(crate) fn start(
        shared: Arc<TopicShared>,
        directory: Arc<Directory>,
        subscribers: Vec<Arc<Subscriber>>,
    ) -> Arc<Self> {
        let span = tracing::info_span!("topic", topic = %shared.name);
        let core = Arc::new_cyclic(|me| TopicCore {
            id: INCARNATIONS.fetch_add(1, Ordering::Relaxed),
            shared: shared.clone(),
            directory: directory.clone(),
            me: me.clone(),
            state: Mutex::new(TopicState {
                shared,
                directory,
                plain: Vec::new(),
                groups: Vec::new(),
                parked: Vec::new(),
                parked_batch: None,
                ended: Vec::new(),
                span,
            }),
            pending: Mutex::new(VecDeque::new()),
            retired: AtomicBool::new(false),
            actor: Mutex::new(ActorSlot::Idle),
            worked: AtomicBool::new(false),
        });
        let mut state = core.state.lock();
        for sub in subscribers {
            state.add(sub, &core.me);
        }
        state.report_crash_loss();
        tracing::debug!(parent: &state.span, subscribers = state.plain.len(), "topic started");
        core.release(state);
        core
    }

    /// Whether this incarnation is over (a publisher holding it must go back to the
    /// directory).
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Publishes `batch` (admitted) through this incarnation: fans it out now if the
    /// state is free and nothing is ahead of it, or leaves it for whoever holds the
    /// state. Hands the batch back if this incarnation is retired: the publisher must
    /// ask the directory for its successor.
    pub(crate) fn publish(&self, batch: PublishBatch) -> Result<(), PublishBatch> {
        if let Some(mut state) = self.state.try_lock() {
            if self.is_retired() {
                return Err(batch);
            }
            if state.parked.is_empty() {
                let mut pending = self.pending.lock();
                if pending.is_empty() {
                    drop(pending);
                    self.fan_out(&mut state, batch);
                } else {
                    pending.push_back(batch);
                }
            } else {
                self.pending.lock().push_back(batch);
            }
            self.drain(&mut state);
            self.release(state);
            return Ok(());
        }
        {
            let mut pending = self.pending.lock();
            if self.is_retired() {
                return Err(batch);
            }
            pending.push_back(batch);
        }
        // Either the holder, letting go, sees the batch (see `release`), or this sees
        // the state free.
        fence(Ordering::SeqCst);
        if let Some(mut state) = self.state.try_lock() {
            self.drain(&mut state);
            self.release(state);
        }
        Ok(())
    }

    /// Fans out one batch under the state. A fan-out that panics retires this
    /// incarnation and reports the failure to the supervisor, which restarts the topic;
    /// the batch and whatever is pending count as lost in that failure (their permits
    /// are dropped unhandled) and the next incarnation reports them as a gap.
    fn fan_out(&self, state: &mut TopicState, batch: PublishBatch) {
        let fanned = std::panic::catch_unwind(AssertUnwindSafe(|| state.fan_out(batch, &self.me)));
        if let Err(panic) = fanned {
            self.fail(state, panic.as_ref());
        }
    }

    /// A fan-out or resume run outside the actor panicked: this incarnation retires
    /// (what it held is lost in the failure) and the supervisor restarts the topic.
    fn fail(&self, state: &mut TopicState, panic: &(dyn std::any::Any + Send)) {
        let reason = panic_message(panic);
        tracing::error!(parent: &state.span, %reason, "topic fan-out failed; the topic restarts");
        drop(self.retire_locked(state));
        let _ = self.directory.supervisor.cast(TopicSupervisorMessage::Failed {
            topic: self.shared.name.clone(),
            incarnation: self.id,
            reason,
        });
    }

    /// A stalled subscriber has room again: its space waker runs this in the task of
    /// the consumer that made the room. The topic resumes right there (parked
    /// deliveries first, then up to [`DRAIN_ROUND`] pending batches) when its state is
    /// free, so a topic stalled by a slow subscriber (most topics, under overload) needs
    /// no actor; when someone holds the state (a publisher, or this very topic closing
    /// the subscriber), or more is pending than one round takes, the actor resumes it.
    fn room(&self) {
        let Some(mut state) = self.state.try_lock() else {
            self.tell(TopicMessage::Resume);
            return;
        };
        if self.is_retired() {
            return;
        }
        // Run by a consumer, which must not be the one to unwind: a panic is the topic's
        // failure, as in a publisher's fan-out.
        let resumed = std::panic::catch_unwind(AssertUnwindSafe(|| state.resume(&self.me)));
        if let Err(panic) = resumed {
            self.fail(&mut state, panic.as_ref());
            return;
        }
        self.drain(&mut state);
        self.release(state);
    }

    /// Fans out pending batches in order, up to [`DRAIN_ROUND`], until a subscriber
    /// stalls the topic.
    fn drain(&self, state: &mut TopicState) {
        for _ in 0..DRAIN_ROUND {
            if !state.parked.is_empty() || self.is_retired() {
                return;
            }
            let Some(batch) = self.pending.lock().pop_front() else {
                return;
            };
            self.fan_out(state, batch);
        }
    }

    /// Lets the state go; then, if batches were left pending while it was held and no
    /// subscriber stalls the topic, asks the actor to fan them out. (A stall ends with
    /// the subscriber's room, which does the same.)
    fn release(&self, state: MutexGuard<'_, TopicState>) {
        let stalled = !state.parked.is_empty();
        drop(state);
        fence(Ordering::SeqCst);
        if !stalled && !self.pending.lock().is_empty() {
            self.tell(TopicMessage::Resume);
        }
    }

    /// Sends the actor `message`, asking the supervisor to start the actor if it has
    /// none yet; the message then waits here until it runs. A retired incarnation's
    /// actor takes nothing new.
    pub(crate) fn tell(&self, message: TopicMessage) {
        let mut slot = self.actor.lock();
        match &mut *slot {
            ActorSlot::Running(actor) => {
                // A failed actor takes nothing; the supervisor replaces the incarnation.
                let _ = actor.cast(message);
            }
            ActorSlot::Starting(waiting) => {
                let again = matches!(message, TopicMessage::Resume)
                    && waiting.iter().any(|m| matches!(m, TopicMessage::Resume));
                if !again {
                    waiting.push(message);
                }
            }
            ActorSlot::Idle => {
                *slot = ActorSlot::Starting(vec![message]);
                drop(slot);
                if let Some(core) = self.me.upgrade() {
                    let _ = self
                        .directory
                        .supervisor
                        .cast(TopicSupervisorMessage::StartActor { core });
                }
            }
            ActorSlot::Stopped => {}
        }
    }

    /// The actor's start (from its `pre_start`): it takes what waited for it, in order,
    /// ahead of anything sent after. Fails if the incarnation ended meanwhile.
    fn attach(&self, actor: &ActorRef<TopicMessage>) -> Result<(), ActorProcessingErr> {
        let mut slot = self.actor.lock();
        let ActorSlot::Starting(waiting) = std::mem::replace(&mut *slot, ActorSlot::Running(actor.clone())) else {
            *slot = ActorSlot::Stopped;
            return Err("the topic's incarnation ended before its actor started".into());
        };
        for message in waiting {
            actor
                .cast(message)
                .map_err(|e| format!("the topic actor's first messages: {e}"))?;
        }
        self.worked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stops the actor if it did nothing since the last call (the supervisor's sweep)
    /// and nothing is parked or queued; returns whether it did. The state's lock is
    /// held meanwhile, so no stall can begin: whatever needs an actor after this asks
    /// for a new one. A message still in the old actor's mailbox had nothing to do.
    pub(crate) fn stop_idle_actor(&self) -> bool {
        let state = self.state.lock();
        let idle = state.parked.is_empty()
            && state.parked_batch.is_none()
            && !self.is_retired()
            && self.pending.lock().is_empty();
        let stopped = idle && {
            let mut slot = self.actor.lock();
            match &*slot {
                ActorSlot::Running(actor) if !self.worked.swap(false, Ordering::Relaxed) => {
                    actor.stop(None);
                    *slot = ActorSlot::Idle;
                    true
                }
                _ => false,
            }
        };
        // Like every holder of the state: a batch queued meanwhile is seen here.
        self.release(state);
        stopped
    }

    /// Whether `actor` is this incarnation's actor for good: the current one, or the
    /// last one of an incarnation that is over. An actor stopped for idleness is
    /// neither, and its stop leaves the incarnation alone.
    fn ends_with(&self, actor: &ActorRef<TopicMessage>) -> bool {
        match &*self.actor.lock() {
            ActorSlot::Running(current) => current.get_id() == actor.get_id(),
            ActorSlot::Stopped => true,
            ActorSlot::Idle | ActorSlot::Starting(_) => false,
        }
    }

    /// Ends the actor's part (the supervisor, once the incarnation is retired): a
    /// running actor is stopped, a start asked for is forgotten, and nothing is taken
    /// from now on.
    pub(crate) fn stop_actor(&self) {
        let slot = std::mem::replace(&mut *self.actor.lock(), ActorSlot::Stopped);
        if let ActorSlot::Running(actor) = slot {
            actor.stop(None);
        }
    }

    /// Whether the actor is running (or starting).
    fn has_actor(&self) -> bool {
        matches!(*self.actor.lock(), ActorSlot::Running(_) | ActorSlot::Starting(_))
    }

    /// The actor's `Resume`: retries what is parked (a subscriber has room, or left),
    /// then fans out what is pending.
    fn resume(&self) {
        self.worked.store(true, Ordering::Relaxed);
        let mut state = self.state.lock();
        if self.is_retired() {
            return;
        }
        state.resume(&self.me);
        self.drain(&mut state);
        self.release(state);
    }

    /// Adds a matching subscription (the supervisor). A plain one gets the retained
    /// value first.
    pub(crate) fn add(&self, sub: Arc<Subscriber>) {
        let mut state = self.state.lock();
        state.add(sub, &self.me);
        self.release(state);
    }

    /// Removes a subscription; the actor retries what is parked, since the one that
    /// left may have been the subscriber the topic waited for.
    pub(crate) fn remove(&self, id: SubscriptionId) {
        let mut state = self.state.lock();
        state.remove(id);
        let stalled = state.parked_batch.is_some();
        drop(state);
        if stalled {
            self.tell(TopicMessage::Resume);
        } else {
            fence(Ordering::SeqCst);
            if !self.pending.lock().is_empty() {
                self.tell(TopicMessage::Resume);
            }
        }
    }

    /// Retires this incarnation: from now on it takes no batch. What it still holds
    /// (parked or pending batches of an incarnation that failed or is replaced) is
    /// dropped, and so counted as lost for its successor to report.
    pub(crate) fn retire(&self) {
        let mut state = self.state.lock();
        let held = self.retire_locked(&mut state);
        drop(state);
        drop(held);
    }

    /// Retires, under the state's lock; hands over the batches still held.
    fn retire_locked(&self, state: &mut TopicState) -> Vec<PublishBatch> {
        let mut pending = self.pending.lock();
        self.retired.store(true, Ordering::Relaxed);
        state.parked.clear();
        state.parked_batch.take().into_iter().chain(pending.drain(..)).collect()
    }

    /// Ends this incarnation for good (its actor stopped, or the bus stops with it
    /// idle): what is still parked or pending is given up on and counted where its
    /// subscribers see it. The permits are completed, so that the loss is not also
    /// reported as a crash loss by a successor.
    pub(crate) fn abandon(&self) {
        let mut state = self.state.lock();
        let pending: usize = self.pending.lock().iter().map(|b| b.messages.len()).sum();
        let stranded = state.parked.iter().map(|p| p.range.len()).sum::<usize>() + pending;
        if stranded > 0 {
            for p in &state.parked {
                p.subscriber.queue.count_lost(p.range.len());
            }
            tracing::error!(parent: &state.span, stranded, "topic stopped with undelivered messages");
        }
        for b in self.retire_locked(&mut state) {
            b.permit.complete();
        }
    }

    /// A snapshot of the topic. Like every holder of the state, it looks for batches
    /// left pending as it lets go.
    pub(crate) fn snapshot(&self) -> TopicSnapshot {
        let state = self.state.lock();
        let mut snapshot = state.snapshot();
        snapshot.backlog_batches = self.pending.lock().len();
        self.release(state);
        snapshot.actor = self.has_actor();
        snapshot
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
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
    /// The full subscriber; its buffer's space waker resumes the topic.
    subscriber: Arc<Subscriber>,
    /// The batch (or group share) being fanned out, shared with those who have it.
    batch: Arc<[Delivery]>,
    /// The part of `batch` this subscriber still has to take.
    range: Range<usize>,
    /// The subscriber's share of a durable receipt, confirmed as it takes the rest.
    receipt: Option<Arc<ReceiptToken>>,
}

/// The fan-out state of one incarnation, behind its [`TopicCore`]'s lock.
struct TopicState {
    /// See [`TopicCore::shared`].
    shared: Arc<TopicShared>,
    /// See [`TopicCore::directory`].
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
    fn add(&mut self, sub: Arc<Subscriber>, me: &Weak<TopicCore>) {
        if sub.queue.is_closed() || self.contains(sub.id) {
            return;
        }
        match &sub.group {
            None => {
                let retained = self.shared.retained.lock().clone();
                if let Some(retained) = retained {
                    let batch: Arc<[Delivery]> = Arc::from(vec![retained]);
                    self.push(&sub, &batch, 0..1, None, me);
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
        me: &Weak<TopicCore>,
    ) {
        let start = range.start;
        let end = range.end;
        let outcome = sub.queue.push(batch, range, receipt.as_ref(), || {
            let me = me.clone();
            Box::new(move || {
                // The incarnation may be gone by now; then there is nothing to resume.
                if let Some(core) = me.upgrade() {
                    core.room();
                }
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
    fn fan_out(&mut self, mut publish: PublishBatch, me: &Weak<TopicCore>) {
        #[cfg(feature = "testsuite")]
        if self.shared.fail_next_fan_out.swap(false, Ordering::Relaxed) {
            panic!("injected fan-out failure");
        }
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
            self.push(sub, &batch, 0..len, share, me);
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
                self.fan_out_group(group, &batch, me);
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
    fn fan_out_group(&mut self, group: &mut Group, batch: &Arc<[Delivery]>, me: &Weak<TopicCore>) {
        group.members.retain(|m| !m.queue.is_closed());
        let members = group.members.len();
        if members == 0 {
            return;
        }
        if members == 1 {
            let member = group.members[0].clone();
            self.push(&member, batch, 0..batch.len(), None, me);
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
                self.push(member, &share, 0..len, None, me);
            }
        }
    }

    /// Retries parked remainders; once none is left, completes the parked batch (the
    /// core then fans out what is pending).
    fn resume(&mut self, me: &Weak<TopicCore>) {
        for parked in std::mem::take(&mut self.parked) {
            self.push(&parked.subscriber, &parked.batch, parked.range, parked.receipt, me);
        }
        for id in std::mem::take(&mut self.ended) {
            self.remove(id);
        }
        if self.parked.is_empty()
            && let Some(done) = self.parked_batch.take()
        {
            done.complete();
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
            stalled_subscribers: self.parked.len(),
            ..self.shared.snapshot()
        }
    }
}

impl Actor for TopicActor {
    type Msg = TopicMessage;
    type State = Arc<TopicCore>;
    type Arguments = Arc<TopicCore>;

    async fn pre_start(
        &self,
        myself: ActorRef<TopicMessage>,
        core: Arc<TopicCore>,
    ) -> Result<Arc<TopicCore>, ActorProcessingErr> {
        core.attach(&myself)?;
        tracing::debug!(topic = %core.shared.name, "topic actor started");
        Ok(core)
    }

    async fn handle(
        &self,
        _myself: ActorRef<TopicMessage>,
        message: TopicMessage,
        core: &mut Arc<TopicCore>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TopicMessage::Resume => core.resume(),
            #[cfg(feature = "testsuite")]
            TopicMessage::Crash => panic!("injected topic crash"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<TopicMessage>,
        core: &mut Arc<TopicCore>,
    ) -> Result<(), ActorProcessingErr> {
        if core.ends_with(&myself) {
            core.abandon();
        }
        tracing::debug!(topic = %core.shared.name, "topic actor stopped");
        Ok(())
    }
}
