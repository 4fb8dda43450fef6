//! Bounded admission into a topic's mailbox, and in-flight tracking.
//!
//! ractor mailboxes are unbounded, so each topic bounds its own: before a publisher
//! hands a batch to a topic it takes a [`Permit`] for the batch's message count and
//! byte size from the topic's [`Admission`]. The permit travels with the batch (fanned
//! out at once, or queued behind a stall) and gives its capacity back when the topic
//! has fanned the batch out (or when the batch is dropped for any reason). When no capacity is left, [`Admission::acquire`]
//! waits; [`Admission::try_acquire`] fails at once.
//!
//! Messages and bytes are taken in one step under one lock. Two separate semaphores
//! would deadlock: a publisher holding message permits while waiting for bytes, and
//! another holding bytes while waiting for messages.
//!
//! # Invariants
//!
//! - `available <= capacity` for both counters; `capacity - available` is exactly the sum
//!   of live permits.
//! - Waiters are served in arrival order: a waiter holds the turnstile while it waits, and
//!   the fast path is only taken when nobody waits, so a large batch cannot be starved by
//!   a stream of small ones.
//! - Once closed, an admission never admits again. [`Admission::close_if_idle`] closes
//!   only when no permit is live, atomically with the check, which is what lets an idle
//!   topic be stopped without losing a message that was already admitted.
//! - A permit that was sent and then dropped without [`Permit::complete`] counts its
//!   messages as lost (the topic's incarnation failed with it queued or mid fan-out).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::budget::{BudgetShare, MemoryBudget};

/// The admission of one topic was closed (the topic is being stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdmissionClosed;

/// A counting gate of messages and bytes, shared by a topic and its publishers.
#[derive(Debug)]
pub(crate) struct Admission {
    /// What is left, taken and given back under one short lock (see the module doc).
    state: Mutex<Available>,
    /// The topic's mailbox bound in messages (`topics.mailbox_messages`).
    capacity_messages: usize,
    /// The topic's mailbox bound in bytes (`topics.mailbox_bytes`).
    capacity_bytes: usize,
    /// Woken (one waiter: the turnstile holder) when capacity returns or on close.
    released: Notify,
    /// Fair queue of waiting publishers; only its holder waits on `released`.
    turnstile: tokio::sync::Mutex<()>,
    /// Publishers inside `acquire`'s slow path; the fast path is closed while non-zero.
    waiters: AtomicUsize,
    /// Messages whose permit was sent but dropped unhandled.
    lost: AtomicU64,
    /// The bus-wide budget: a permit that holds a share of it gives it back here.
    budget: Arc<MemoryBudget>,
}

#[derive(Debug)]
struct Available {
    /// Messages that may still be admitted.
    messages: usize,
    /// Bytes that may still be admitted.
    bytes: usize,
    /// The topic is being reaped: nothing is admitted any more.
    closed: bool,
}

impl Admission {
    /// A gate of `messages` and `bytes` capacity, under the bus-wide `budget`.
    pub(crate) fn new(messages: usize, bytes: usize, budget: Arc<MemoryBudget>) -> Arc<Self> {
        Arc::new(Admission {
            state: Mutex::new(Available {
                messages,
                bytes,
                closed: false,
            }),
            capacity_messages: messages,
            capacity_bytes: bytes,
            released: Notify::new(),
            turnstile: tokio::sync::Mutex::new(()),
            waiters: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            budget,
        })
    }

    /// Capacity in messages.
    pub(crate) fn capacity_messages(&self) -> usize {
        self.capacity_messages
    }

    /// Capacity in bytes.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Clamps a request to what can ever be granted, so a request never waits forever.
    fn clamp(&self, messages: usize, bytes: usize) -> (usize, usize) {
        (messages.min(self.capacity_messages), bytes.min(self.capacity_bytes))
    }

    fn take(self: &Arc<Self>, messages: usize, bytes: usize) -> Result<Option<Permit>, AdmissionClosed> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(AdmissionClosed);
        }
        if st.messages < messages || st.bytes < bytes {
            return Ok(None);
        }
        st.messages -= messages;
        st.bytes -= bytes;
        Ok(Some(Permit {
            admission: self.clone(),
            messages,
            bytes,
            budget_bytes: 0,
            sent: false,
        }))
    }

    /// Takes capacity now, or returns `Ok(None)` when there is not enough of it.
    ///
    /// Requests larger than the capacity are clamped to it (callers split batches so
    /// that this only happens for a single oversize message, which the publish size
    /// limit already forbids).
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        messages: usize,
        bytes: usize,
    ) -> Result<Option<Permit>, AdmissionClosed> {
        let (messages, bytes) = self.clamp(messages, bytes);
        if self.waiters.load(Ordering::Acquire) != 0 {
            // Somebody queued first; do not overtake them.
            return if self.state.lock().closed {
                Err(AdmissionClosed)
            } else {
                Ok(None)
            };
        }
        self.take(messages, bytes)
    }

    /// Takes capacity, waiting in arrival order until there is enough.
    pub(crate) async fn acquire(self: &Arc<Self>, messages: usize, bytes: usize) -> Result<Permit, AdmissionClosed> {
        if let Some(permit) = self.try_acquire(messages, bytes)? {
            return Ok(permit);
        }
        let (messages, bytes) = self.clamp(messages, bytes);
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = DecrementOnDrop(&self.waiters);
        let _turn = self.turnstile.lock().await;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(permit) = self.take(messages, bytes)? {
                return Ok(permit);
            }
            released.await;
        }
    }

    /// Closes the gate if no permit is live; returns whether it is now closed.
    pub(crate) fn close_if_idle(&self) -> bool {
        let mut st = self.state.lock();
        if st.closed {
            return true;
        }
        if st.messages == self.capacity_messages && st.bytes == self.capacity_bytes {
            st.closed = true;
            drop(st);
            self.released.notify_one();
            return true;
        }
        false
    }

    /// Opens the gate again (a topic put to sleep is woken with its admission).
    pub(crate) fn reopen(&self) {
        self.state.lock().closed = false;
    }

    /// (messages, bytes) held by live permits: admitted and not yet fanned out.
    pub(crate) fn outstanding(&self) -> (usize, usize) {
        let st = self.state.lock();
        (self.capacity_messages - st.messages, self.capacity_bytes - st.bytes)
    }

    /// Messages admitted, sent, and then lost with a dead topic actor.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn release(&self, messages: usize, bytes: usize) {
        let mut st = self.state.lock();
        st.messages += messages;
        st.bytes += bytes;
        drop(st);
        self.released.notify_one();
    }
}

struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Capacity taken from an [`Admission`]; given back on drop.
///
/// It travels with the batch it admitted, to the topic's fan-out.
#[derive(Debug)]
pub(crate) struct Permit {
    /// The admission the capacity came from and goes back to.
    admission: Arc<Admission>,
    /// Messages taken.
    messages: usize,
    /// Bytes taken.
    bytes: usize,
    /// Bytes of the bus-wide budget the batch also holds (see [`Permit::hold`]).
    budget_bytes: usize,
    /// Set once the batch is handed to the topic: from then on, a drop without
    /// `complete` is a loss.
    sent: bool,
}

impl Permit {
    /// Takes over a share of the bus-wide budget, given back with the permit.
    pub(crate) fn hold(&mut self, share: BudgetShare<'_>) {
        self.budget_bytes += share.into_bytes();
    }

    /// Marks the permit as handed to the topic.
    pub(crate) fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// Marks the permit as not (or no longer) handed to a topic.
    pub(crate) fn mark_unsent(&mut self) {
        self.sent = false;
    }

    /// The topic has fanned the batch out: give the capacity back, with no loss.
    pub(crate) fn complete(mut self) {
        self.sent = false;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.sent {
            self.admission.lost.fetch_add(self.messages as u64, Ordering::Relaxed);
        }
        self.admission.release(self.messages, self.bytes);
        if self.budget_bytes > 0 {
            self.admission.budget.release(self.budget_bytes);
        }
    }
}

/// Counts work that has been accepted and not yet finished, and lets a closer wait for
/// that count to reach zero (the drain of a session or of the whole bus).
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    /// Live guards.
    count: AtomicUsize,
    /// Woken when `count` reaches zero; every waiter re-checks the count.
    idle: Notify,
}

impl Inflight {
    /// A new counter at zero.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Inflight::default())
    }

    /// Counts one unit of work until the guard is dropped.
    pub(crate) fn guard(self: &Arc<Self>) -> InflightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }

    /// Units of work in flight.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight; `false` if `timeout` passed first.
    pub(crate) async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.count() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// One unit of in-flight work; dropping it ends the unit.
#[derive(Debug)]
pub(crate) struct InflightGuard(Arc<Inflight>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Capacity is taken in messages and bytes at once and returned on drop.
    #[tokio::test]
    async fn take_and_release() {
        let a = Admission::new(10, 100, MemoryBudget::new(1 << 20));
        let p1 = a.try_acquire(4, 60).unwrap().unwrap();
        assert_eq!(a.outstanding(), (4, 60));
        assert!(a.try_acquire(1, 41).unwrap().is_none(), "bytes exhausted");
        let p2 = a.try_acquire(6, 40).unwrap().unwrap();
        assert!(a.try_acquire(1, 0).unwrap().is_none(), "messages exhausted");
        drop(p1);
        p2.complete();
        assert_eq!(a.outstanding(), (0, 0));
        assert_eq!(a.lost(), 0);
    }

    /// A waiting publisher gets capacity when it comes back, and the one queued first is
    /// served first even when a later one would fit.
    #[tokio::test]
    async fn waiters_are_fair() {
        let a = Admission::new(10, 100, MemoryBudget::new(1 << 20));
        let held = a.try_acquire(10, 10).unwrap().unwrap();
        let big = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(10, 10).await.map(|p| p.complete()) }
        });
        while a.waiters.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(a.try_acquire(1, 1).unwrap().is_none(), "must not overtake the waiter");
        drop(held);
        big.await.unwrap().unwrap();
        assert_eq!(a.outstanding(), (0, 0));
    }

    /// `close_if_idle` refuses while a permit is live, and closing fails waiters.
    #[tokio::test]
    async fn close_only_when_idle() {
        let a = Admission::new(2, 100, MemoryBudget::new(1 << 20));
        let p = a.try_acquire(2, 1).unwrap().unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(1, 1).await.map(|p| p.complete()) }
        });
        assert!(!a.close_if_idle());
        drop(p);
        waiter.await.unwrap().unwrap();
        assert!(a.close_if_idle());
        assert_eq!(a.try_acquire(1, 1).unwrap_err(), AdmissionClosed);
        assert_eq!(a.acquire(1, 1).await.unwrap_err(), AdmissionClosed);
    }

    /// A sent permit dropped without completion counts its messages as lost.
    #[test]
    fn sent_and_dropped_is_lost() {
        let a = Admission::new(10, 100, MemoryBudget::new(1 << 20));
        let mut p = a.try_acquire(3, 3).unwrap().unwrap();
        p.mark_sent();
        drop(p);
        assert_eq!(a.lost(), 3);
        assert_eq!(a.outstanding(), (0, 0));
    }

    /// The in-flight counter wakes a drain waiter when it reaches zero.
    #[tokio::test]
    async fn inflight_drains() {
        let inflight = Inflight::new();
        let g = inflight.guard();
        assert!(!inflight.wait_idle(Duration::from_millis(10)).await);
        let waiter = tokio::spawn({
            let i = inflight.clone();
            async move { i.wait_idle(Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        drop(g);
        assert!(waiter.await.unwrap());
    }
}
