//! The bus-wide memory budget: a bound, in bytes, on everything admitted to topics and
//! not yet fanned out, summed over every topic.
//!
//! Each topic bounds its own mailbox ([`crate::admission`]), but with many topics those
//! bounds add up: one `block` subscriber that stops reading on `t.>` would let every
//! topic it matches fill its mailbox. So a publish takes, after its topic's permit, a
//! [`BudgetShare`] of this budget for the batch's bytes (payload, headers, and
//! [`MESSAGE_OVERHEAD_BYTES`] per message for the bus's own bookkeeping). The share is
//! folded into the topic's permit ([`crate::admission::Permit::hold`]), travels inside
//! the batch with it, and is given back with it when the topic has fanned the batch
//! out: no reference count is touched per batch. When the budget is used up, publishers wait (or `try_publish`
//! is refused) exactly as on a full topic.
//!
//! Shares are taken after the topic's permit and given back without taking anything,
//! so waiting for the budget while holding a permit cannot deadlock: the budget is
//! freed by fan-outs, which need nothing a waiting publisher holds.
//!
//! # Invariants
//!
//! - `available <= capacity`; `capacity - available` is exactly the sum of live shares.
//! - Waiters are served in arrival order (one turnstile, as in the admission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::Notify;

/// What one admitted message costs the budget beyond its payload and headers: the
/// delivery's own fields, its topic handle and the batch slot, rounded up.
pub(crate) const MESSAGE_OVERHEAD_BYTES: usize = 64;

/// The bus-wide budget of admitted bytes.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    /// Bytes that may still be admitted. Taken by compare-and-swap, given back by an
    /// add: no lock on the hot path.
    available: AtomicUsize,
    /// `limits.max_memory_bytes`.
    capacity: usize,
    /// Woken (one waiter: the turnstile holder) when bytes are given back.
    released: Notify,
    /// Fair queue of waiting publishers; only its holder waits on `released`.
    turnstile: tokio::sync::Mutex<()>,
    /// Publishers inside `take`'s slow path; the fast path is closed while non-zero.
    waiters: AtomicUsize,
    /// Publishes that had to wait for the budget, in total.
    waits: AtomicU64,
    /// `try_publish` calls refused because the budget was used up, in total.
    refusals: AtomicU64,
}

/// A point-in-time view of the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemorySnapshot {
    /// The budget, `limits.max_memory_bytes`.
    pub budget_bytes: usize,
    /// Bytes admitted and not yet fanned out, bus-wide.
    pub admitted_bytes: usize,
    /// Publishes that waited because the budget was used up, in total.
    pub budget_waits: u64,
    /// Non-waiting publishes refused because the budget was used up, in total.
    pub budget_refusals: u64,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            available: AtomicUsize::new(capacity),
            capacity,
            released: Notify::new(),
            turnstile: tokio::sync::Mutex::new(()),
            waiters: AtomicUsize::new(0),
            waits: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        })
    }

    /// The budget in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// What a batch of `messages` messages of `bytes` payload and header bytes costs.
    pub(crate) fn cost(messages: usize, bytes: usize) -> usize {
        bytes.saturating_add(messages.saturating_mul(MESSAGE_OVERHEAD_BYTES))
    }

    fn grab(&self, bytes: usize) -> Option<BudgetShare<'_>> {
        self.available
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |available| {
                available.checked_sub(bytes)
            })
            .ok()?;
        Some(BudgetShare { budget: self, bytes })
    }

    /// Takes `bytes` now if nobody waits and they are there, counting nothing if not
    /// (for a caller that will wait with [`MemoryBudget::take`] instead).
    pub(crate) fn take_now(&self, bytes: usize) -> Option<BudgetShare<'_>> {
        let bytes = bytes.min(self.capacity);
        if self.waiters.load(Ordering::Acquire) == 0 {
            self.grab(bytes)
        } else {
            None
        }
    }

    /// Takes `bytes` now if nobody waits and they are there; counts a refusal if not.
    /// A request over the whole budget is clamped to it, so it can always be granted.
    pub(crate) fn try_take(&self, bytes: usize) -> Option<BudgetShare<'_>> {
        let share = self.take_now(bytes);
        if share.is_none() {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        share
    }

    /// Takes `bytes`, waiting in arrival order until they are there.
    pub(crate) async fn take(&self, bytes: usize) -> BudgetShare<'_> {
        let bytes = bytes.min(self.capacity);
        if self.waiters.load(Ordering::Acquire) == 0
            && let Some(share) = self.grab(bytes)
        {
            return share;
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        // SeqCst with `release`: either the releaser sees this waiter and wakes it, or
        // the `grab` below sees what was released.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Decrement(&self.waiters);
        let _turn = self.turnstile.lock().await;
        // The turnstile holder is the only one waiting on `released`; a wake-up meant
        // for a waiter before it is not lost, since that one re-checks and leaves.
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(share) = self.grab(bytes) {
                return share;
            }
            released.await;
        }
    }

    /// The budget's state now.
    pub(crate) fn snapshot(&self) -> MemorySnapshot {
        MemorySnapshot {
            budget_bytes: self.capacity,
            admitted_bytes: self.capacity - self.available.load(Ordering::Relaxed),
            budget_waits: self.waits.load(Ordering::Relaxed),
            budget_refusals: self.refusals.load(Ordering::Relaxed),
        }
    }

    /// Gives back `bytes` that a share held (see [`BudgetShare::into_bytes`]).
    pub(crate) fn release(&self, bytes: usize) {
        self.available.fetch_add(bytes, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.released.notify_one();
        }
    }
}

/// Undoes a waiter count however the wait ends (a cancelled publish included).
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes of the budget just taken; given back on drop, unless handed over to a permit
/// with [`BudgetShare::into_bytes`].
#[derive(Debug)]
pub(crate) struct BudgetShare<'a> {
    /// The budget the bytes came from and go back to.
    budget: &'a MemoryBudget,
    /// Bytes held.
    bytes: usize,
}

impl BudgetShare<'_> {
    /// The bytes held, now owed by the caller to [`MemoryBudget::release`].
    pub(crate) fn into_bytes(self) -> usize {
        let bytes = self.bytes;
        std::mem::forget(self);
        bytes
    }
}

impl Drop for BudgetShare<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Shares add up to the budget; a taker waits until one is given back; a try is
    /// refused and counted meanwhile; the snapshot tells it all.
    #[tokio::test]
    async fn shares_bound_the_total_and_waiters_resume() {
        let budget = MemoryBudget::new(1000);
        let a = budget.take(600).await;
        let b = budget.try_take(400).expect("fits exactly");
        assert!(budget.try_take(1).is_none());
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(500).await.into_bytes() }
        });
        let early = tokio::time::timeout(Duration::from_millis(30), async {
            while !waiting.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(early.is_err(), "the taker waits while the budget is used up");
        let snap = budget.snapshot();
        assert_eq!((snap.admitted_bytes, snap.budget_refusals), (1000, 1));
        drop(a);
        let c = waiting.await.unwrap();
        assert_eq!(budget.snapshot().admitted_bytes, 900);
        assert_eq!(budget.snapshot().budget_waits, 1);
        drop(b);
        budget.release(c);
        assert_eq!(budget.snapshot().admitted_bytes, 0);
        // Larger than the whole budget: clamped, so it is granted once all is free.
        let huge = budget.take(5000).await;
        assert_eq!(budget.snapshot().admitted_bytes, 1000);
        drop(huge);
    }
}
