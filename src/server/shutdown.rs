//! The server's one shutdown story, as the streams see it: a phase every stream
//! watches, the drain deadline, and what was left undelivered.
//!
//! ```text
//! Serving ──signal──► Draining ──every admitted message in subscriber buffers──► Closing
//!                     (no new streams,        (or the deadline)                  (streams send
//!                      publishes or                                               what they hold,
//!                      subscriptions)                                             then end)
//! ```
//!
//! In `Draining` the streams keep reading (publishes and subscribes are refused with
//! `UNAVAILABLE`, credits and pings are served) and their pumps keep delivering, so a
//! `block` subscriber still connected receives what other sessions published before the
//! signal. Only in `Closing` does each stream close its session; what its subscriptions
//! hold is sent (within the client's credits) until the deadline, and anything left then
//! is counted here and logged at ERROR, subscription by subscription.
//!
//! # Invariants
//!
//! - The phase only moves forward; a closed channel (the server gone) reads as
//!   `Closing`.
//! - The deadline is set once, when the signal arrives, before the phase leaves
//!   `Serving`: every stream that sees `Draining` also sees the deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Normal service.
    Serving,
    /// The signal came: nothing new is taken, everything admitted is delivered.
    Draining,
    /// Admitted messages are in subscriber buffers (or the drain ran out of time):
    /// streams close their sessions, flush and end.
    Closing,
}

/// The shutdown state every stream shares.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    /// The phase; `serve` is the only sender. Streams wait on it through [`Stopping`].
    phase: watch::Receiver<Phase>,
    /// When the whole drain must be over; set once when the signal arrives.
    deadline: Arc<OnceLock<Instant>>,
    /// The configured drain budget (`shutdown.drain_timeout_ms`).
    drain_timeout: Duration,
    /// Messages streams could not deliver before the deadline, summed over streams.
    undelivered: Arc<AtomicU64>,
}

impl Shutdown {
    /// The shared state and the sender of its phase.
    pub(crate) fn new(drain_timeout: Duration) -> (Shutdown, watch::Sender<Phase>) {
        let (tx, rx) = watch::channel(Phase::Serving);
        let shutdown = Shutdown {
            phase: rx,
            deadline: Arc::new(OnceLock::new()),
            drain_timeout,
            undelivered: Arc::new(AtomicU64::new(0)),
        };
        (shutdown, tx)
    }

    /// Starts the drain clock (the first call only).
    pub(crate) fn start_clock(&self) {
        let _ = self.deadline.set(Instant::now() + self.drain_timeout);
    }

    /// Resolves once the phase is at least `phase`. Keep one across a stream's loop
    /// rather than making one per message: see [`Stopping`].
    pub(crate) fn reached(&self, phase: Phase) -> Stopping {
        let mut rx = self.phase.clone();
        let seen = self.phase.clone();
        Stopping {
            seen,
            wait: Box::pin(async move {
                let _ = rx.wait_for(|p| *p >= phase).await;
            }),
            waker: None,
        }
    }

    /// Whether the server has left `Serving`.
    pub(crate) fn is_stopping(&self) -> bool {
        *self.phase.borrow() != Phase::Serving
    }

    /// How long a stream may still take to drain: what is left of the deadline once
    /// the server is shutting down, the whole budget otherwise (a client closing).
    pub(crate) fn budget(&self) -> Duration {
        match self.deadline.get() {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => self.drain_timeout,
        }
    }

    /// Counts `n` messages a stream could not deliver.
    pub(crate) fn count_undelivered(&self, n: u64) {
        self.undelivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages counted by [`Shutdown::count_undelivered`] so far.
    pub(crate) fn undelivered(&self) -> u64 {
        self.undelivered.load(Ordering::Relaxed)
    }
}

/// How a graceful shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Everything admitted was delivered: to subscriber buffers in time, and from there
    /// to the clients still connected.
    pub complete: bool,
    /// Publish batches still not fanned out when the drain gave up (a `block` subscriber
    /// that stopped reading).
    pub inflight_batches: usize,
    /// Messages left in subscription buffers of connected clients at the deadline.
    pub undelivered: u64,
}

/// The server's phase as a future that is cheap to poll again and again.
///
/// Waiting on the signal registers the task's waker under a lock that every stream
/// shares; polled once per message, that lock would be taken once per message. This
/// future polls the wait only when the signal has changed (one atomic load tells) or
/// when it is polled by another task than the one registered: the registration stays in
/// place between polls, so the change still wakes an idle stream.
pub(crate) struct Stopping {
    /// Tells, with one atomic load, whether the phase changed since the start.
    seen: watch::Receiver<Phase>,
    /// Resolves once the phase is reached (or the sender is gone); polled only as the
    /// type's doc says.
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The waker `wait` was last polled with.
    waker: Option<Waker>,
}

impl Future for Stopping {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        let registered = this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if registered && matches!(this.seen.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        this.waker = Some(cx.waker().clone());
        this.wait.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each phase wakes the waiters for it and not the ones for a later phase; the
    /// budget is the whole timeout until the clock starts, then what is left of it.
    #[tokio::test]
    async fn phases_move_forward_and_wake_their_waiters() {
        let (shutdown, tx) = Shutdown::new(Duration::from_secs(5));
        assert_eq!(shutdown.budget(), Duration::from_secs(5));
        assert!(!shutdown.is_stopping());
        let draining = tokio::spawn(shutdown.reached(Phase::Draining));
        let mut closing = tokio::spawn(shutdown.reached(Phase::Closing));
        shutdown.start_clock();
        tx.send(Phase::Draining).unwrap();
        draining.await.unwrap();
        assert!(shutdown.is_stopping());
        assert!(shutdown.budget() <= Duration::from_secs(5));
        let early = tokio::time::timeout(Duration::from_millis(50), &mut closing).await;
        assert!(early.is_err(), "draining does not release the closing waiters");
        tx.send(Phase::Closing).unwrap();
        closing.await.unwrap();
        drop(tx);
        // With the sender gone every wait resolves at once.
        shutdown.reached(Phase::Closing).await;
    }
}
