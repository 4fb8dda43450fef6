//! The topic directory: how a publisher finds a topic and hands it a batch.
//!
//! Live topics are kept in a sharded concurrent map (no global lock on the hot path).
//! Only the topic supervisor writes it; publishers read it and, on a miss or a retired
//! incarnation, ask the supervisor to start (or restart) the topic, which serializes
//! topic creation with subscription changes.
//!
//! A publish to one topic goes: look the topic up, take an admission [`Permit`] for the
//! batch (waiting, or failing at once for `try_publish`), hand the batch with the permit
//! inside to the topic's current incarnation, which fans it out then and there unless a
//! subscriber stalls the topic (see `actors::topic`). A closed admission (the topic is
//! being reaped) or a retired incarnation sends the publisher back to the supervisor,
//! and the batch is retried with the new one; a batch handed back is never lost.
//!
//! A topic nothing subscribes to is *asleep*: it has a directory entry (its sequence,
//! retained value and counters) but no incarnation, since there is no one to fan out
//! to. A publisher stamps such a batch itself, under the topic's gate, and is done: the
//! sequence numbers are taken, a retained value is kept, the messages go to no one. The
//! supervisor wakes the topic (starts an incarnation) when a matching subscription arrives,
//! closing the gate first, so that no publish is stamped asleep after the subscription
//! was added; its sweep puts an awake topic to sleep again once nothing matches it and
//! nothing admitted is in its mailbox. A topic costs under 1 KB asleep, about 1.2 KB
//! awake, and about 7 KB more while it has an actor (see `actors::topic`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::Mutex;
use ractor::ActorRef;
use streambus_types::{Delivery, Message, Topic};

use crate::actors::topic::{PublishBatch, TopicCore, TopicSnapshot};
use crate::actors::topic_supervisor::TopicSupervisorMessage;
use crate::admission::{Admission, AdmissionClosed, InflightGuard, Permit};
use crate::budget::MemoryBudget;
use crate::error::{BusError, answered};
use crate::receipt::ReceiptToken;

/// How many times a publish is re-routed (topic reaped or restarted under it) before it
/// gives up with an internal error. Each re-route goes through the supervisor, which
/// settles the topic, so more than two means something is badly wrong.
const MAX_REROUTES: usize = 8;

/// Who stamps a topic's publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// No incarnation: nothing subscribes; publishers stamp their batches themselves.
    Asleep,
    /// Stamped and fanned out under the incarnation's state (it is running, starting or
    /// being restarted).
    Awake,
    /// Reaped: the name's next publish starts it anew.
    Closed,
}

/// State of one topic that outlives its incarnations: a restarted or re-woken topic of
/// the same name gets the same sequence counter, retained value and admission.
#[derive(Debug)]
pub(crate) struct TopicShared {
    /// The topic.
    pub(crate) name: Topic,
    /// The topic's mailbox bound, shared with every publisher.
    pub(crate) admission: Arc<Admission>,
    /// Next sequence number to assign; advanced only by whoever stamps (see `gate`).
    pub(crate) next_sequence: AtomicU64,
    /// The retained delivery, if any.
    pub(crate) retained: Mutex<Option<Delivery>>,
    /// Milliseconds since the directory's epoch of the last handled publish.
    pub(crate) last_active_ms: AtomicU64,
    /// Times the topic was restarted after a failure.
    pub(crate) restarts: AtomicU32,
    /// Messages lost in crashes that have already been reported to subscribers as gaps.
    pub(crate) lost_reported: AtomicU64,
    /// Messages stamped since the topic (name) was started, asleep or awake.
    pub(crate) published: AtomicU64,
    /// The publish time given to the last message, in nanoseconds: each message gets a
    /// later one than the last, so that publish times are unique and increasing per
    /// topic (time-series stores key points on them). Written by whoever stamps.
    last_timestamp_ns: AtomicU64,
    /// Who stamps: the publishers alone (asleep) or under the awake topic's fan-out
    /// state. Changed only by the supervisor; held by a publisher while it stamps a
    /// batch asleep.
    pub(crate) gate: Mutex<Gate>,
    /// Fault injection: the next fan-out panics.
    #[cfg(feature = "testsuite")]
    pub(crate) fail_next_fan_out: std::sync::atomic::AtomicBool,
}

/// What the directory holds per live topic.
#[derive(Debug, Clone)]
pub(crate) struct TopicRef {
    /// The state that outlives incarnations (and its admission, which publishers take).
    pub(crate) shared: Arc<TopicShared>,
    /// The topic's current incarnation, which publishers hand their batches to (a
    /// retired one hands them back, and the supervisor must be asked for its
    /// successor); `None` while the topic is asleep.
    pub(crate) awake: Option<Arc<TopicCore>>,
}

impl TopicRef {
    /// Whether a publisher may use this entry: asleep (the gate decides), or an
    /// incarnation that is not retired and not the one the publisher saw refuse.
    fn usable(&self, stale: Option<u64>) -> bool {
        match &self.awake {
            None => true,
            Some(core) => Some(core.id) != stale && !core.is_retired(),
        }
    }
}

/// A publisher's remembered way to the topic it publishes to most: with it, a publish
/// at once ([`crate::SessionHandle::publish_now_on`]) skips the directory's lookup
/// (hashing the name, a shard's lock, a probe into a map of every live topic) for as
/// long as the topic's incarnation lives. It holds that one entry (the topic's state
/// and incarnation) alive until it is used for another topic or dropped.
#[derive(Debug, Default)]
pub struct TopicRoute(Option<TopicRef>);

impl TopicRoute {
    /// The topic this route leads to, if it holds one.
    pub fn topic(&self) -> Option<&Topic> {
        self.0.as_ref().map(|r| &r.shared.name)
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
    /// Where misses and retired incarnations are resolved; calls only, answered promptly.
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

    /// The entry to publish through. `stale` names an incarnation the caller saw refuse
    /// a batch; `woken` says the caller found the topic's gate no longer asleep, so the
    /// supervisor (which changed it) must answer.
    async fn lookup(&self, topic: &Topic, stale: Option<u64>, woken: bool) -> Result<TopicRef, BusError> {
        if !woken
            && let Some(r) = self.topics.get(topic)
            && r.usable(stale)
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

    /// Hands `messages` (a plain publish, not empty, all of one topic) to their topic at
    /// once if nothing would make it wait: the topic is in the directory, and its
    /// admission and the bus budget have room for the whole batch now, with nobody
    /// queued before it. Otherwise nothing is published and the messages come back, in
    /// order, for [`Directory::send`].
    ///
    /// The topic's entry is taken from `route` while it is still the topic's (its
    /// incarnation not retired), and put there after a lookup.
    pub(crate) fn send_now(
        &self,
        messages: Vec<Message>,
        budget: &Arc<MemoryBudget>,
        guards: impl Fn() -> [InflightGuard; 2],
        route: &mut TopicRoute,
    ) -> Result<(), Vec<Message>> {
        let Some(first) = messages.first() else {
            return Ok(());
        };
        let slot = &mut route.0;
        if !slot
            .as_ref()
            .is_some_and(|r| r.shared.name == first.topic && r.usable(None))
        {
            *slot = self
                .topics
                .get(&first.topic)
                .filter(|r| r.usable(None))
                .map(|r| r.clone());
        }
        let Some(target) = slot.as_ref() else {
            return Err(messages);
        };
        let sent = match &target.awake {
            None => target.shared.publish_asleep(messages, None, self.now_ms()),
            Some(core) => admit_now(core, &target.shared, messages, budget, guards),
        };
        if sent.is_err() {
            // The entry may be the reason (a gate changed, an incarnation retired
            // meanwhile): the next publish looks it up again.
            *slot = None;
        }
        sent
    }

    /// Hands `messages` (all for `topic`, within the batch limit) to the topic.
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
        let mut woken = false;
        let mut reroutes = 0;
        while !messages.is_empty() {
            let target = self.lookup(topic, stale, woken).await?;
            let Some(core) = &target.awake else {
                match target.shared.publish_asleep(messages, relay, self.now_ms()) {
                    Ok(()) => {
                        // Nothing here waits, so a publisher looping on topics asleep
                        // would never let its worker thread go: it spends the task's
                        // cooperative budget as a wait would.
                        tokio::task::consume_budget().await;
                        return Ok(());
                    }
                    Err(back) => {
                        messages = back;
                        woken = true;
                        reroutes += 1;
                        if reroutes > MAX_REROUTES {
                            return Err(BusError::Internal(format!(
                                "topic {topic} kept changing under the publisher"
                            )));
                        }
                        continue;
                    }
                }
            };
            woken = false;
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
                    stale = Some(core.id);
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
            let sibling = receipt.map(|r| r.sibling(1));
            match hand_over(core, messages, permit, guards(), sibling, relay.cloned()) {
                Ok(()) => {
                    messages = rest;
                    // As asleep: a fan-out here never waits, so it spends the budget.
                    tokio::task::consume_budget().await;
                }
                Err(back) => {
                    messages = back;
                    messages.extend(rest);
                    reroutes += 1;
                    if reroutes > MAX_REROUTES {
                        return Err(BusError::Internal(format!("topic {topic} is not accepting messages")));
                    }
                    stale = Some(core.id);
                }
            }
        }
        Ok(())
    }
}

/// [`Directory::send_now`]'s admission and hand-over to an awake incarnation.
fn admit_now(
    core: &TopicCore,
    shared: &TopicShared,
    messages: Vec<Message>,
    budget: &Arc<MemoryBudget>,
    guards: impl Fn() -> [InflightGuard; 2],
) -> Result<(), Vec<Message>> {
    let admission = &shared.admission;
    let n = messages.len();
    let bytes = messages.iter().map(Message::byte_len).sum::<usize>();
    let cost = MemoryBudget::cost(n, bytes);
    if n > admission.capacity_messages() || bytes > admission.capacity_bytes() || cost > budget.capacity() {
        // Split across several admissions by `send`.
        return Err(messages);
    }
    let Ok(Some(mut permit)) = admission.try_acquire(n, bytes) else {
        return Err(messages);
    };
    let Some(share) = budget.take_now(cost) else {
        return Err(messages);
    };
    permit.hold(share);
    hand_over(core, messages, permit, guards(), None, None)
}

/// Hands an admitted batch (its permit holding its share of the budget) to the topic's
/// incarnation `core`. A retired incarnation hands the messages back and the permit is
/// returned unspent: the publisher goes back to the directory with them.
fn hand_over(
    core: &TopicCore,
    messages: Vec<Message>,
    mut permit: Permit,
    guards: [InflightGuard; 2],
    receipt: Option<Arc<ReceiptToken>>,
    relay: Option<crate::Relay>,
) -> Result<(), Vec<Message>> {
    permit.mark_sent();
    let batch = PublishBatch {
        messages,
        permit,
        _guards: guards,
        receipt,
        relay,
    };
    core.publish(batch).map_err(|mut batch| {
        batch.permit.mark_unsent();
        std::mem::take(&mut batch.messages)
    })
}

impl TopicShared {
    pub(crate) fn new(name: Topic, admission: Arc<Admission>, now_ms: u64, gate: Gate) -> Arc<Self> {
        Arc::new(TopicShared {
            name,
            admission,
            next_sequence: AtomicU64::new(1),
            retained: Mutex::new(None),
            last_active_ms: AtomicU64::new(now_ms),
            restarts: AtomicU32::new(0),
            lost_reported: AtomicU64::new(0),
            published: AtomicU64::new(0),
            last_timestamp_ns: AtomicU64::new(0),
            gate: Mutex::new(gate),
            #[cfg(feature = "testsuite")]
            fail_next_fan_out: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Takes sequence numbers and publish times for `n` messages (one nanosecond apart,
    /// after the last); returns the first of each. Called by one stamper at a time: the
    /// actor, or a publisher holding the gate asleep.
    pub(crate) fn stamp(&self, n: u64) -> (u64, u64) {
        let base_ns = now_ns().max(self.last_timestamp_ns.load(Ordering::Relaxed) + 1);
        self.last_timestamp_ns
            .store(base_ns + n.saturating_sub(1), Ordering::Relaxed);
        self.published.fetch_add(n, Ordering::Relaxed);
        (self.next_sequence.fetch_add(n, Ordering::AcqRel), base_ns)
    }

    /// Keeps `m` (stamped `sequence`, `timestamp_ns`) as the retained value; an empty
    /// payload clears it.
    pub(crate) fn retain(&self, m: &Message, sequence: u64, timestamp_ns: u64) {
        *self.retained.lock() = (!m.payload.is_empty()).then(|| Delivery {
            topic: m.topic.clone(),
            sequence,
            timestamp_ns,
            payload: m.payload.clone(),
            headers: m.headers.clone(),
            retained: true,
            retain: true,
            groups_served: None,
        });
    }

    /// Takes the retained value another node holds for this topic (the last of
    /// `messages`; an empty payload clears it). It has no sequence number here: it was
    /// not published on this node, so it is stored with sequence 0.
    pub(crate) fn retain_relayed(&self, messages: &[Message]) {
        if let Some(m) = messages.last() {
            self.retain(m, 0, now_ns());
        }
    }

    /// Publishes `messages` on the topic while it is asleep (no subscriber): stamps
    /// them, keeps a retained value, and lets them go, as the actor would with no one
    /// to fan out to. Hands them back if the topic is no longer asleep.
    fn publish_asleep(
        &self,
        messages: Vec<Message>,
        relay: Option<&crate::Relay>,
        now_ms: u64,
    ) -> Result<(), Vec<Message>> {
        let gate = self.gate.lock();
        if *gate != Gate::Asleep {
            return Err(messages);
        }
        match relay {
            Some(crate::Relay::Lost { count, .. }) => {
                // The gap's numbers are reserved as the actor would, for no one to see.
                self.next_sequence.fetch_add(*count, Ordering::AcqRel);
            }
            Some(crate::Relay::Retain) => self.retain_relayed(&messages),
            relay => {
                let (first, base_ns) = self.stamp(messages.len() as u64);
                // A group's relayed copy is not the topic's value here (see the actor).
                if !matches!(relay, Some(crate::Relay::Group(_)))
                    && let Some((i, m)) = messages.iter().enumerate().rfind(|(_, m)| m.retain)
                {
                    self.retain(m, first + i as u64, base_ns + i as u64);
                }
            }
        }
        self.last_active_ms.store(now_ms, Ordering::Relaxed);
        Ok(())
    }

    /// What the topic's state says of it, without its actor's part (subscribers,
    /// backlog): the whole snapshot of a topic asleep.
    pub(crate) fn snapshot(&self) -> TopicSnapshot {
        let (mailbox_messages, mailbox_bytes) = self.admission.outstanding();
        // One lock at a time: a publisher asleep takes the retained value's under the gate.
        let asleep = *self.gate.lock() == Gate::Asleep;
        let retained = self.retained.lock().is_some();
        TopicSnapshot {
            topic: self.name.clone(),
            subscribers: 0,
            queue_groups: Vec::new(),
            published: self.published.load(Ordering::Relaxed),
            next_sequence: self.next_sequence.load(Ordering::Acquire),
            mailbox_messages,
            mailbox_bytes,
            mailbox_capacity_messages: self.admission.capacity_messages(),
            mailbox_capacity_bytes: self.admission.capacity_bytes(),
            backlog_batches: 0,
            stalled_subscribers: 0,
            retained,
            restarts: self.restarts.load(Ordering::Relaxed),
            lost_in_crashes: self.admission.lost(),
            asleep,
            actor: false,
        }
    }

    /// Messages lost in crashes and not yet reported as gaps; marks them reported.
    pub(crate) fn take_unreported_loss(&self) -> u64 {
        let lost = self.admission.lost();
        let reported = self.lost_reported.swap(lost, Ordering::AcqRel);
        lost.saturating_sub(reported)
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asleep(name: &str) -> Arc<TopicShared> {
        let budget = MemoryBudget::new(1 << 20);
        TopicShared::new(
            Topic::new(name).unwrap(),
            Admission::new(16, 1 << 16, budget),
            0,
            Gate::Asleep,
        )
    }

    fn message(payload: &str) -> Message {
        Message::new(Topic::new("t.a").unwrap(), payload.to_owned())
    }

    /// Asleep, a publisher stamps the batch itself and keeps the last retained value;
    /// once the gate is no longer asleep (woken or reaped) it stamps nothing and gets
    /// its messages back, in order.
    #[test]
    fn only_a_gate_asleep_lets_publishers_stamp() {
        let shared = asleep("t.a");
        let batch = vec![message("1"), message("2").retained(), message("3")];
        shared.publish_asleep(batch, None, 7).unwrap();
        assert_eq!(shared.next_sequence.load(Ordering::Relaxed), 4);
        assert_eq!(shared.published.load(Ordering::Relaxed), 3);
        assert_eq!(shared.last_active_ms.load(Ordering::Relaxed), 7);
        let retained = shared.retained.lock().clone().expect("retained");
        assert_eq!((&retained.payload[..], retained.sequence), (&b"2"[..], 2));

        shared
            .publish_asleep(
                vec![message("lost")],
                Some(&crate::Relay::Lost { count: 5, group: None }),
                8,
            )
            .unwrap();
        assert_eq!(
            shared.next_sequence.load(Ordering::Relaxed),
            9,
            "a gap's numbers are reserved"
        );
        assert_eq!(shared.published.load(Ordering::Relaxed), 3);

        for gate in [Gate::Awake, Gate::Closed] {
            *shared.gate.lock() = gate;
            let back = shared
                .publish_asleep(vec![message("4"), message("5")], None, 9)
                .unwrap_err();
            let payloads: Vec<&[u8]> = back.iter().map(|m| &m.payload[..]).collect();
            assert_eq!(payloads, [b"4", b"5"]);
            assert_eq!(
                shared.next_sequence.load(Ordering::Relaxed),
                9,
                "{gate:?} stamps nothing"
            );
        }
        assert!(!shared.snapshot().asleep);
    }

    /// Publish times stay unique and increasing whoever stamps.
    #[test]
    fn stamps_never_go_back() {
        let shared = asleep("t.a");
        let (s1, t1) = shared.stamp(3);
        let (s2, t2) = shared.stamp(1);
        assert_eq!((s1, s2), (1, 4));
        assert!(t2 >= t1 + 3);
    }
}
