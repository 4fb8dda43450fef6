//! The bounded buffer between the topics a subscription matches and its consumer.
//!
//! Topic actors push shared delivery batches (`Arc<[Delivery]>` plus a range, so a
//! 100-way fan-out copies no delivery); the consumer pops whole entries. Capacity is in
//! messages and bytes; when a push does not fit, the subscription's [`OverflowPolicy`]
//! decides:
//!
//! - `block`: the fitting prefix is taken, the pusher is told how much, and a space
//!   waker it supplied is kept and fired once room comes back. Parked pushers are woken
//!   oldest first and only as many as there is room for (each needs at least one
//!   message's): a subscriber shared by thousands of topics (`sensors.>`) does not wake
//!   them all for the few that will fit, only to see the rest park again.
//! - `drop_oldest`: buffered deliveries are evicted from the front to make room.
//! - `drop_newest`: the part of the push that does not fit is discarded.
//! - `disconnect`: the queue closes with [`CloseReason::SlowConsumer`].
//!
//! Dropped deliveries become [`Gap`] entries, one per topic and contiguous run of
//! sequence numbers, placed where the lost deliveries were, so the consumer meets the gap
//! before its next delivery.
//!
//! # Invariants
//!
//! - Deliveries buffered never exceed the capacity, except that an empty queue always
//!   accepts one delivery (so an oversize message cannot wedge a `block` subscriber).
//! - Gap entries are not counted in capacity; there is at most one per topic in any run
//!   of consecutive gap entries, so they are bounded by capacity plus the topic count.
//! - After `close`, pushes are refused and the consumer drains what is buffered, then
//!   sees the close reason once. After `detach` (consumer gone) the buffer is freed.
//! - Space wakers are fired outside the lock, each at most once, in the order they were
//!   registered; every one still registered is fired at the latest when the consumer
//!   finds the queue empty, or when it closes.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use serde::Serialize;
use streambus_types::{CloseReason, Delivery, Gap, OverflowPolicy};

use crate::metrics::BusMetrics;
use crate::receipt::ReceiptToken;

/// Called once when a blocked pusher may retry.
pub(crate) type SpaceWaker = Box<dyn FnOnce() + Send>;

/// What happened to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// All of it is buffered (or, under a drop policy, what was lost is recorded as a gap).
    Done,
    /// `block` policy: only `accepted` deliveries fit; the space waker was registered.
    Blocked {
        /// How many deliveries from the start of the range were buffered.
        accepted: usize,
    },
    /// `disconnect` policy: it did not fit, the queue is now closed.
    Disconnected,
    /// The queue was already closed; nothing was buffered.
    Closed,
}

/// What the consumer takes out.
#[derive(Debug)]
pub(crate) enum Popped {
    /// A run of deliveries of one topic.
    Deliveries(DeliveryRun),
    /// Deliveries lost before the next one.
    Gap(Gap),
    /// The queue is closed and empty.
    Closed(CloseReason),
}

/// A run of deliveries sharing one allocation with every other subscriber.
#[derive(Debug, Clone)]
pub struct DeliveryRun {
    /// The topic's fan-out batch (or a queue group's share), shared with every other
    /// subscriber that got it; never copied per subscriber.
    batch: Arc<[Delivery]>,
    /// The part of `batch` that belongs to this run.
    range: Range<usize>,
    /// The durable publish these deliveries belong to (durable sink subscriptions only).
    receipt: Option<Arc<ReceiptToken>>,
}

impl DeliveryRun {
    /// The deliveries.
    pub fn as_slice(&self) -> &[Delivery] {
        &self.batch[self.range.clone()]
    }

    /// Confirms to the durable publisher that these deliveries are stored (called once,
    /// by a durable sink's intake, after they are in its disk buffer).
    pub(crate) fn confirm(&self) {
        if let Some(r) = &self.receipt {
            r.confirm(self.range.len());
        }
    }

    /// The run's first delivery, read in place; it leaves the run.
    pub fn next_delivery(&mut self) -> Option<&Delivery> {
        if self.range.is_empty() {
            return None;
        }
        self.range.start += 1;
        self.batch.get(self.range.start - 1)
    }

    pub(crate) fn pop_front(&mut self) -> Option<Delivery> {
        self.next_delivery().cloned()
    }
}

impl std::ops::Deref for DeliveryRun {
    type Target = [Delivery];
    fn deref(&self) -> &[Delivery] {
        self.as_slice()
    }
}

#[derive(Debug)]
enum Entry {
    Run {
        batch: Arc<[Delivery]>,
        range: Range<usize>,
        bytes: usize,
        receipt: Option<Arc<ReceiptToken>>,
    },
    Gap(Gap),
}

/// A point-in-time view of one subscription buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSnapshot {
    /// The overflow policy.
    pub policy: OverflowPolicy,
    /// Deliveries buffered now.
    pub queued_messages: usize,
    /// Bytes buffered now.
    pub queued_bytes: usize,
    /// Capacity in messages.
    pub capacity_messages: usize,
    /// Capacity in bytes.
    pub capacity_bytes: usize,
    /// Most deliveries ever buffered at once.
    pub peak_messages: usize,
    /// Deliveries handed to the consumer.
    pub delivered: u64,
    /// Deliveries lost under the overflow policy (or at close).
    pub dropped: u64,
    /// Gap events handed to the consumer.
    pub gaps_delivered: u64,
    /// Whether a publisher-side topic is waiting for room (`block` only).
    pub blocking: bool,
    /// Why the queue closed, if it has.
    pub closed: Option<CloseReason>,
}

/// The mutable part of a [`SubscriberQueue`], behind its one lock.
struct State {
    /// Runs and gaps in push order; the consumer pops from the front.
    entries: VecDeque<Entry>,
    /// Deliveries held in `entries` (bounded by `capacity_messages`).
    messages: usize,
    /// Payload and header bytes held in `entries` (bounded by `capacity_bytes`).
    bytes: usize,
    /// Set once, by the bus (unsubscribe, slow consumer, session end, shutdown); pushes
    /// are refused from then on and the consumer drains what is left.
    closed: Option<CloseReason>,
    /// The consumer dropped its `Subscription`: nothing will ever be popped again, so
    /// pushes are refused rather than buffered.
    detached: bool,
    /// The consumer has been handed the close reason.
    close_seen: bool,
    /// The consumer's task, when it waits on an empty queue.
    consumer: Option<Waker>,
    /// Topics parked on this full `block` queue, oldest first, each woken (it resumes,
    /// in the task of whoever made the room) when room returns. At most one per topic
    /// that pushes here.
    space_wakers: VecDeque<SpaceWaker>,
    /// Room promised to the parked topics woken since (one message each) and not yet
    /// taken by a push: wakers are fired only for room beyond it.
    promised: usize,
    /// Highest `messages` seen, for snapshots.
    peak_messages: usize,
    /// Deliveries handed to the consumer.
    delivered: u64,
    /// Deliveries the overflow policy dropped (each reported in a gap).
    dropped: u64,
    /// Gap events handed to the consumer.
    gaps_delivered: u64,
}

/// A subscription's bounded buffer; shared by the topics that push and the consumer.
pub(crate) struct SubscriberQueue {
    /// Entries, counters and wakers; a short parking_lot lock, never held while a
    /// waker runs (see [`Wake`]).
    state: Mutex<State>,
    /// What a push into a full queue does.
    policy: OverflowPolicy,
    /// Most deliveries held at once.
    capacity_messages: usize,
    /// Most payload and header bytes held at once (a single larger run is still taken
    /// into an empty queue, so nothing is refused forever).
    capacity_bytes: usize,
    /// The bus-wide counters: this buffer adds its deliveries (with their latency), its
    /// drops and its gaps, outside the lock.
    metrics: Arc<BusMetrics>,
}

impl std::fmt::Debug for SubscriberQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberQueue")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

fn bytes_of(ds: &[Delivery]) -> usize {
    ds.iter().map(Delivery::byte_len).sum()
}

fn gap_of(ds: &[Delivery]) -> Gap {
    debug_assert!(!ds.is_empty() && ds.iter().all(|d| d.topic == ds[0].topic));
    Gap {
        topic: ds[0].topic.clone(),
        dropped: ds.len() as u64,
        first_sequence: ds[0].sequence,
        last_sequence: ds[ds.len() - 1].sequence,
    }
}

/// Wakers to fire once the lock is released: waking under the lock would let the woken
/// task contend for it at once (or, for a space waker, run a topic's cast inside it).
#[derive(Default)]
#[must_use]
struct Wake {
    /// The consumer, when something was pushed or the queue closed.
    consumer: Option<Waker>,
    /// Parked topics, when room was made.
    space: Vec<SpaceWaker>,
}

impl Wake {
    fn fire(self) {
        if let Some(w) = self.consumer {
            w.wake();
        }
        for w in self.space {
            w();
        }
    }
}

/// Keeps `waker` as the consumer's to wake when something comes, unless it wakes the
/// task already kept: a consumer polls an empty queue once per look, and cloning its
/// waker each time is an atomic count on its task. (A look with a waker that wakes
/// nothing still displaces the kept one: that is how a consumer that is about to push
/// to its own queue asks not to be woken by it.)
fn keep_consumer(slot: &mut Option<Waker>, waker: &Waker) {
    if slot.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
        return;
    }
    *slot = Some(waker.clone());
}

impl State {
    /// How many deliveries from the front of `ds` fit now.
    fn fit(&self, ds: &[Delivery], cap_m: usize, cap_b: usize) -> usize {
        let (mut m, mut b) = (self.messages, self.bytes);
        let mut n = 0;
        for d in ds {
            let len = d.byte_len();
            let empty = m == 0;
            if !empty && (m + 1 > cap_m || b + len > cap_b) {
                break;
            }
            m += 1;
            b += len;
            n += 1;
        }
        n
    }

    fn push_run(&mut self, batch: &Arc<[Delivery]>, range: Range<usize>, receipt: Option<&Arc<ReceiptToken>>) {
        if range.is_empty() {
            return;
        }
        let bytes = bytes_of(&batch[range.clone()]);
        self.messages += range.len();
        self.bytes += bytes;
        self.promised = self.promised.saturating_sub(range.len());
        self.peak_messages = self.peak_messages.max(self.messages);
        self.entries.push_back(Entry::Run {
            batch: batch.clone(),
            range,
            bytes,
            receipt: receipt.cloned(),
        });
    }

    /// Records lost deliveries in the run of gap entries starting at `at` (front) or
    /// ending at the back, merging with a gap of the same topic in that run.
    fn record_gap(&mut self, lost: &[Delivery], front: bool) {
        if lost.is_empty() {
            return;
        }
        self.dropped += lost.len() as u64;
        let gap = gap_of(lost);
        let run: Box<dyn Iterator<Item = &mut Entry>> = if front {
            Box::new(self.entries.iter_mut())
        } else {
            Box::new(self.entries.iter_mut().rev())
        };
        for entry in run {
            match entry {
                Entry::Gap(g) if g.topic == gap.topic => {
                    g.dropped += gap.dropped;
                    g.first_sequence = g.first_sequence.min(gap.first_sequence);
                    g.last_sequence = g.last_sequence.max(gap.last_sequence);
                    return;
                }
                Entry::Gap(_) => {}
                Entry::Run { .. } => break,
            }
        }
        if front {
            let at = self.entries.iter().take_while(|e| matches!(e, Entry::Gap(_))).count();
            self.entries.insert(at, Entry::Gap(gap));
        } else {
            self.entries.push_back(Entry::Gap(gap));
        }
    }

    /// Evicts the oldest buffered deliveries until `need_m` more messages and `need_b`
    /// more bytes fit (or nothing is buffered).
    fn evict_front(&mut self, need_m: usize, need_b: usize, cap_m: usize, cap_b: usize) {
        while self.messages > 0 && (self.messages + need_m > cap_m || self.bytes + need_b > cap_b) {
            let Some(pos) = self.entries.iter().position(|e| matches!(e, Entry::Run { .. })) else {
                break;
            };
            let Entry::Run {
                batch, range, bytes, ..
            } = &mut self.entries[pos]
            else {
                unreachable!()
            };
            let batch = batch.clone();
            let start = range.start;
            let mut end = start;
            let mut freed = 0;
            while end < range.end
                && (self.messages - (end - start) + need_m > cap_m || self.bytes - freed + need_b > cap_b)
            {
                freed += batch[end].byte_len();
                end += 1;
            }
            range.start = end;
            *bytes -= freed;
            if range.start == range.end {
                self.entries.remove(pos);
            }
            self.messages -= end - start;
            self.bytes -= freed;
            self.record_gap(&batch[start..end], true);
        }
    }
}

impl SubscriberQueue {
    /// An empty queue.
    pub(crate) fn new(
        policy: OverflowPolicy,
        capacity_messages: usize,
        capacity_bytes: usize,
        metrics: Arc<BusMetrics>,
    ) -> Arc<Self> {
        Arc::new(SubscriberQueue {
            state: Mutex::new(State {
                entries: VecDeque::new(),
                messages: 0,
                bytes: 0,
                closed: None,
                detached: false,
                close_seen: false,
                consumer: None,
                space_wakers: VecDeque::new(),
                promised: 0,
                peak_messages: 0,
                delivered: 0,
                dropped: 0,
                gaps_delivered: 0,
            }),
            policy,
            capacity_messages: capacity_messages.max(1),
            capacity_bytes: capacity_bytes.max(1),
            metrics,
        })
    }

    /// Pushes `batch[range]` (all of one topic) under the overflow policy.
    ///
    /// `on_block` is called, only under `block` and only when not everything fit, to make
    /// the waker that will be fired once room comes back. `receipt` travels with what is
    /// buffered, to the consumer.
    pub(crate) fn push(
        &self,
        batch: &Arc<[Delivery]>,
        range: Range<usize>,
        receipt: Option<&Arc<ReceiptToken>>,
        on_block: impl FnOnce() -> SpaceWaker,
    ) -> Push {
        if range.is_empty() {
            return Push::Done;
        }
        let (cap_m, cap_b) = (self.capacity_messages, self.capacity_bytes);
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return Push::Closed;
        }
        let ds = &batch[range.clone()];
        let dropped_before = st.dropped;
        let mut wake = Wake::default();
        let outcome = match self.policy {
            OverflowPolicy::Block => {
                let n = st.fit(ds, cap_m, cap_b);
                st.push_run(batch, range.start..range.start + n, receipt);
                if n < ds.len() {
                    st.space_wakers.push_back(on_block());
                    Push::Blocked { accepted: n }
                } else {
                    Push::Done
                }
            }
            OverflowPolicy::DropNewest => {
                let n = st.fit(ds, cap_m, cap_b);
                st.push_run(batch, range.start..range.start + n, receipt);
                st.record_gap(&ds[n..], false);
                Push::Done
            }
            OverflowPolicy::DropOldest => {
                // Keep the newest suffix of the push that fits in an empty queue.
                let (mut keep, mut m, mut b) = (ds.len(), 0usize, 0usize);
                while keep > 0 {
                    let len = ds[keep - 1].byte_len();
                    if m > 0 && (m + 1 > cap_m || b + len > cap_b) {
                        break;
                    }
                    m += 1;
                    b += len;
                    keep -= 1;
                }
                st.evict_front(m, b, cap_m, cap_b);
                st.record_gap(&ds[..keep], true);
                st.push_run(batch, range.start + keep..range.end, receipt);
                Push::Done
            }
            OverflowPolicy::Disconnect => {
                if st.fit(ds, cap_m, cap_b) == ds.len() {
                    st.push_run(batch, range, receipt);
                    Push::Done
                } else {
                    st.dropped += ds.len() as u64;
                    st.closed = Some(CloseReason::SlowConsumer);
                    wake.space = st.space_wakers.drain(..).collect();
                    Push::Disconnected
                }
            }
        };
        if st.detached {
            st.entries.clear();
            st.messages = 0;
            st.bytes = 0;
        }
        wake.consumer = st.consumer.take();
        let dropped = st.dropped - dropped_before;
        drop(st);
        if dropped > 0 {
            self.metrics.dropped(self.policy, dropped);
        }
        wake.fire();
        outcome
    }

    /// Takes the next entry, registering the consumer's waker when there is none.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Popped>> {
        let mut st = self.state.lock();
        let Some(entry) = st.entries.pop_front() else {
            if st.detached || st.close_seen {
                return Poll::Ready(None);
            }
            if let Some(reason) = st.closed {
                st.close_seen = true;
                return Poll::Ready(Some(Popped::Closed(reason)));
            }
            keep_consumer(&mut st.consumer, cx.waker());
            // Whatever is still parked may go now, whether or not those woken before
            // it pushed what they were promised room for.
            st.promised = 0;
            if st.space_wakers.is_empty() {
                return Poll::Pending;
            }
            let wake = Wake {
                consumer: None,
                space: st.space_wakers.drain(..).collect(),
            };
            drop(st);
            wake.fire();
            return Poll::Pending;
        };
        let mut run = None;
        let popped = match entry {
            Entry::Run {
                batch,
                range,
                bytes,
                receipt,
            } => {
                st.messages -= range.len();
                st.bytes -= bytes;
                st.delivered += range.len() as u64;
                let first = &batch[range.start];
                run = Some((range.len(), bytes, (!first.retained).then_some(first.timestamp_ns)));
                Popped::Deliveries(DeliveryRun { batch, range, receipt })
            }
            Entry::Gap(g) => {
                st.gaps_delivered += 1;
                Popped::Gap(g)
            }
        };
        let mut wake = Wake::default();
        if !st.space_wakers.is_empty()
            && (st.messages <= self.capacity_messages / 2 && st.bytes <= self.capacity_bytes / 2)
        {
            let room = (self.capacity_messages - st.messages).saturating_sub(st.promised);
            let n = room.min(st.space_wakers.len());
            st.promised += n;
            wake.space = st.space_wakers.drain(..n).collect();
        }
        drop(st);
        match run {
            Some((messages, bytes, published)) => self.metrics.delivered(messages, bytes, published),
            None => self.metrics.gap(self.policy),
        }
        wake.fire();
        Poll::Ready(Some(popped))
    }

    /// Refuses further pushes; the consumer drains what is buffered, then sees `reason`.
    /// Returns false if it was already closed.
    pub(crate) fn close(&self, reason: CloseReason) -> bool {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return false;
        }
        st.closed = Some(reason);
        let wake = Wake {
            consumer: st.consumer.take(),
            space: st.space_wakers.drain(..).collect(),
        };
        drop(st);
        wake.fire();
        true
    }

    /// The consumer is gone: refuse pushes and free the buffer.
    pub(crate) fn detach(&self) {
        let mut st = self.state.lock();
        st.closed.get_or_insert(CloseReason::Unsubscribed);
        st.detached = true;
        st.entries.clear();
        st.messages = 0;
        st.bytes = 0;
        let wake = Wake {
            consumer: None,
            space: st.space_wakers.drain(..).collect(),
        };
        drop(st);
        wake.fire();
    }

    /// Appends a gap for deliveries lost before they could be pushed (a topic crash).
    pub(crate) fn push_gap(&self, gap: Gap) {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return;
        }
        st.dropped += gap.dropped;
        self.metrics.dropped(self.policy, gap.dropped);
        match st.entries.back_mut() {
            Some(Entry::Gap(g)) if g.topic == gap.topic && g.last_sequence + 1 == gap.first_sequence => {
                g.dropped += gap.dropped;
                g.last_sequence = gap.last_sequence;
            }
            _ => st.entries.push_back(Entry::Gap(gap)),
        }
        let consumer = st.consumer.take();
        drop(st);
        if let Some(w) = consumer {
            w.wake();
        }
    }

    /// Counts deliveries that could not be pushed because the queue closed under a
    /// blocked pusher (shutdown with a stalled `block` subscriber).
    pub(crate) fn count_lost(&self, n: usize) {
        self.state.lock().dropped += n as u64;
        self.metrics.dropped(self.policy, n as u64);
    }

    /// Whether the consumer is gone.
    pub(crate) fn is_detached(&self) -> bool {
        self.state.lock().detached
    }

    /// Whether pushes are refused.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// Deliveries and bytes buffered now.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.messages, st.bytes)
    }

    /// A point-in-time view.
    pub(crate) fn snapshot(&self) -> QueueSnapshot {
        let st = self.state.lock();
        QueueSnapshot {
            policy: self.policy,
            queued_messages: st.messages,
            queued_bytes: st.bytes,
            capacity_messages: self.capacity_messages,
            capacity_bytes: self.capacity_bytes,
            peak_messages: st.peak_messages,
            delivered: st.delivered,
            dropped: st.dropped,
            gaps_delivered: st.gaps_delivered,
            blocking: !st.space_wakers.is_empty(),
            closed: st.closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use futures::task::noop_waker;
    use proptest::prelude::*;
    use streambus_types::{Headers, Topic};

    use super::*;

    fn batch(topic: &str, seqs: Range<u64>, size: usize) -> Arc<[Delivery]> {
        let topic = Topic::new(topic).unwrap();
        seqs.map(|sequence| Delivery {
            topic: topic.clone(),
            sequence,
            timestamp_ns: 0,
            payload: Bytes::from(vec![0u8; size]),
            headers: Headers::new(),
            retained: false,
            retain: false,
            groups_served: None,
        })
        .collect()
    }

    fn push_all(q: &SubscriberQueue, b: &Arc<[Delivery]>) -> Push {
        q.push(b, 0..b.len(), None, || Box::new(|| {}))
    }

    /// A gap as (topic, dropped, first, last), easy to compare.
    type GapTuple = (String, u64, u64, u64);

    /// Everything poppable now: deliveries as sequence numbers, gaps as tuples.
    fn drain(q: &SubscriberQueue) -> (Vec<u64>, Vec<GapTuple>, Option<CloseReason>) {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut seqs, mut gaps, mut closed) = (vec![], vec![], None);
        while let Poll::Ready(Some(p)) = q.poll_pop(&mut cx) {
            match p {
                Popped::Deliveries(run) => seqs.extend(run.iter().map(|d| d.sequence)),
                Popped::Gap(g) => gaps.push((g.topic.to_string(), g.dropped, g.first_sequence, g.last_sequence)),
                Popped::Closed(r) => closed = Some(r),
            }
        }
        (seqs, gaps, closed)
    }

    /// drop_oldest keeps the newest deliveries and reports the evicted ones as one gap.
    #[test]
    fn drop_oldest_evicts_front() {
        let q = SubscriberQueue::new(OverflowPolicy::DropOldest, 4, 1 << 20, Default::default());
        assert_eq!(push_all(&q, &batch("a", 1..4, 1)), Push::Done);
        assert_eq!(push_all(&q, &batch("a", 4..7, 1)), Push::Done);
        let (seqs, gaps, _) = drain(&q);
        assert_eq!(gaps, vec![("a".into(), 2, 1, 2)]);
        assert_eq!(seqs, vec![3, 4, 5, 6]);
        assert_eq!(q.snapshot().dropped, 2);
    }

    /// drop_oldest with a push larger than the whole buffer keeps its newest part only.
    #[test]
    fn drop_oldest_oversize_push() {
        let q = SubscriberQueue::new(OverflowPolicy::DropOldest, 3, 1 << 20, Default::default());
        push_all(&q, &batch("a", 1..3, 1));
        push_all(&q, &batch("a", 3..10, 1));
        let (seqs, gaps, _) = drain(&q);
        assert_eq!(gaps, vec![("a".into(), 6, 1, 6)]);
        assert_eq!(seqs, vec![7, 8, 9]);
    }

    /// drop_newest keeps what is buffered and reports the refused tail after it.
    #[test]
    fn drop_newest_refuses_tail() {
        let q = SubscriberQueue::new(OverflowPolicy::DropNewest, 4, 1 << 20, Default::default());
        push_all(&q, &batch("a", 1..4, 1));
        push_all(&q, &batch("a", 4..8, 1));
        push_all(&q, &batch("a", 8..9, 1));
        let (seqs, gaps, _) = drain(&q);
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(gaps, vec![("a".into(), 4, 5, 8)]);
    }

    /// Byte capacity bounds as well as message capacity.
    #[test]
    fn byte_capacity() {
        let q = SubscriberQueue::new(OverflowPolicy::DropNewest, 100, 250, Default::default());
        push_all(&q, &batch("a", 1..4, 100));
        let snap = q.snapshot();
        assert_eq!((snap.queued_messages, snap.queued_bytes, snap.dropped), (2, 200, 1));
    }

    /// An empty queue takes one delivery even when it is larger than the byte capacity.
    #[test]
    fn oversize_single_fits_empty_queue() {
        let q = SubscriberQueue::new(OverflowPolicy::Block, 10, 10, Default::default());
        assert_eq!(push_all(&q, &batch("a", 1..3, 50)), Push::Blocked { accepted: 1 });
    }

    /// Topics parked on a full `block` queue are woken oldest first and only as many as
    /// there is room for (room already promised to those woken before counts until they
    /// push); whoever is left is woken when the consumer finds the queue empty, even if
    /// those woken before never pushed.
    #[test]
    fn block_wakes_parked_topics_by_room() {
        let q = SubscriberQueue::new(OverflowPolicy::Block, 4, 1 << 20, Default::default());
        for i in 1..5 {
            assert_eq!(push_all(&q, &batch("a", i..i + 1, 1)), Push::Done);
        }
        let woken = Arc::new(Mutex::new(Vec::new()));
        for t in 0..10usize {
            let w = woken.clone();
            let out = q.push(&batch(&format!("t{t}"), 1..2, 1), 0..1, None, move || {
                Box::new(move || w.lock().push(t))
            });
            assert_eq!(out, Push::Blocked { accepted: 0 });
        }
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut pop = || assert!(matches!(q.poll_pop(&mut cx), Poll::Ready(Some(Popped::Deliveries(_)))));
        pop();
        assert!(woken.lock().is_empty(), "3 of 4 held: above half");
        pop();
        assert_eq!(*woken.lock(), [0, 1], "2 held: room for 2");
        pop();
        assert_eq!(*woken.lock(), [0, 1, 2], "1 held: 3 free, 2 of them promised");
        // t0 takes its room; the next pop has room for one more.
        assert_eq!(push_all(&q, &batch("t0", 1..2, 1)), Push::Done);
        pop();
        assert_eq!(*woken.lock(), [0, 1, 2, 3]);
        pop();
        assert_eq!(*woken.lock(), [0, 1, 2, 3, 4], "empty: 4 free, 3 of them promised");
        // Empty: everyone left goes, although t1..t3 never pushed.
        assert!(q.poll_pop(&mut cx).is_pending());
        assert_eq!(*woken.lock(), (0..10).collect::<Vec<_>>());
        assert!(!q.snapshot().blocking);
    }

    /// A waker that counts its wakes.
    struct Counting(AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The consumer's waker is kept across looks with the same waker, replaced by a
    /// look with another (the newest is the one woken), and displaced by a look with a
    /// waker that wakes nothing: a push then wakes no one.
    #[test]
    fn the_last_look_s_waker_is_woken() {
        let q = SubscriberQueue::new(OverflowPolicy::Block, 8, 1 << 20, Default::default());
        let (a, b) = (
            Arc::new(Counting(AtomicUsize::new(0))),
            Arc::new(Counting(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let look = |w: &Waker| assert!(q.poll_pop(&mut Context::from_waker(w)).is_pending());
        look(&wa);
        look(&wa);
        push_all(&q, &batch("a", 1..2, 1));
        assert_eq!(a.0.load(Ordering::SeqCst), 1, "kept across two looks, woken once");
        drain(&q);
        look(&wa);
        look(&wb);
        push_all(&q, &batch("a", 2..3, 1));
        assert_eq!(
            (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)),
            (1, 1),
            "the newest waker"
        );
        drain(&q);
        look(&wb);
        look(Waker::noop());
        push_all(&q, &batch("a", 3..4, 1));
        assert_eq!(b.0.load(Ordering::SeqCst), 1, "displaced by the quiet look");
    }

    /// block takes the fitting prefix and fires the space waker once room comes back.
    #[test]
    fn block_wakes_when_drained() {
        let q = SubscriberQueue::new(OverflowPolicy::Block, 4, 1 << 20, Default::default());
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let b = batch("a", 1..7, 1);
        let out = q.push(&b, 0..6, None, move || {
            Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            })
        });
        assert_eq!(out, Push::Blocked { accepted: 4 });
        assert!(q.snapshot().blocking);
        let (seqs, gaps, _) = drain(&q);
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert!(gaps.is_empty());
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert_eq!(q.push(&b, 4..6, None, || unreachable!()), Push::Done);
        assert_eq!(q.snapshot().dropped, 0);
    }

    /// disconnect closes the queue; what was buffered is still delivered, then the reason.
    #[test]
    fn disconnect_closes_after_buffered() {
        let q = SubscriberQueue::new(OverflowPolicy::Disconnect, 2, 1 << 20, Default::default());
        push_all(&q, &batch("a", 1..3, 1));
        assert_eq!(push_all(&q, &batch("a", 3..4, 1)), Push::Disconnected);
        assert_eq!(push_all(&q, &batch("a", 4..5, 1)), Push::Closed);
        let (seqs, _, closed) = drain(&q);
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(closed, Some(CloseReason::SlowConsumer));
        assert_eq!(q.snapshot().dropped, 1);
    }

    /// Gaps of different topics stay separate, and each comes before the next delivery.
    #[test]
    fn gaps_per_topic() {
        let q = SubscriberQueue::new(OverflowPolicy::DropOldest, 2, 1 << 20, Default::default());
        push_all(&q, &batch("a", 1..3, 1));
        push_all(&q, &batch("b", 1..3, 1));
        push_all(&q, &batch("a", 3..4, 1));
        let (seqs, gaps, _) = drain(&q);
        assert_eq!(gaps, vec![("a".into(), 2, 1, 2), ("b".into(), 1, 1, 1)]);
        assert_eq!(seqs, vec![2, 3]);
    }

    proptest! {
        /// Under any sequence of pushes and pops, for each drop policy: the buffer stays
        /// within capacity, and every pushed delivery is either delivered or counted in
        /// exactly one gap: nothing vanishes.
        #[test]
        fn nothing_lost_silently(
            policy in prop_oneof![Just(OverflowPolicy::DropOldest), Just(OverflowPolicy::DropNewest)],
            ops in prop::collection::vec((0usize..3, 1usize..6, any::<bool>()), 1..60),
            cap in 1usize..8,
        ) {
            let q = SubscriberQueue::new(policy, cap, 1 << 20, Default::default());
            let topics = ["a", "b", "c"];
            let mut next = [1u64; 3];
            let mut pushed = 0u64;
            let (mut delivered, mut gapped) = (0u64, 0u64);
            for (t, n, pop) in ops {
                let b = batch(topics[t], next[t]..next[t] + n as u64, 1);
                next[t] += n as u64;
                pushed += n as u64;
                prop_assert_eq!(push_all(&q, &b), Push::Done);
                prop_assert!(q.snapshot().queued_messages <= cap);
                if pop {
                    let (s, g, _) = drain(&q);
                    delivered += s.len() as u64;
                    gapped += g.iter().map(|g| g.1).sum::<u64>();
                }
            }
            let (s, g, _) = drain(&q);
            delivered += s.len() as u64;
            gapped += g.iter().map(|g| g.1).sum::<u64>();
            prop_assert_eq!(delivered + gapped, pushed);
            prop_assert_eq!(q.snapshot().dropped, gapped);
        }
    }
}
