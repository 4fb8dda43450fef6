//! Futures polled again only when they asked to be.
//!
//! A stream's loop waits on its next frame and, beside it, on signals that almost never
//! fire: the client gone, an operator's close, the idle timer (on the server), the
//! ping's timer (in the SDK). `select!` polls every one of them each time the loop's
//! task wakes, which is once per frame, and polling a waiting `Notify` takes its lock,
//! polling a timer touches its entry: per frame, a few locks and cold cache lines for
//! nothing. A [`Quiet`] polls its future with the waker
//! of its [`Signals`] group, and polls it again only once that waker was woken since
//! its last poll (or the task's waker changed). The members of a group share one wake
//! counter, so between two wakes a whole group costs one atomic load of one cache line.
//!
//! # Invariants
//!
//! - A member's future is polled at least once, and again whenever the group's waker
//!   was woken since its last poll: a wake is never lost, since the counter is read
//!   before the poll, not after.
//! - The task waker registered is the one of the last poll of any member; a wake of any
//!   member's future wakes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// The waker a group's futures are polled with: counts the wake, then wakes the task.
#[derive(Default)]
struct Flag {
    /// Wakes so far.
    wakes: AtomicU64,
    /// The task that polls the group's members.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::AcqRel);
        self.task.wake();
    }
}

/// A group of [`Quiet`] futures polled by one task, sharing one waker.
pub(crate) struct Signals {
    flag: Arc<Flag>,
    waker: Waker,
}

impl Signals {
    /// An empty group.
    pub(crate) fn new() -> Self {
        let flag = Arc::new(Flag::default());
        Signals {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// `inner` as a member of the group; its first poll polls it.
    pub(crate) fn quiet<F: Future + Unpin>(&self, inner: F) -> Quiet<F> {
        Quiet {
            inner,
            flag: self.flag.clone(),
            waker: self.waker.clone(),
            seen: None,
            task: None,
        }
    }
}

/// `inner`, polled only when its group's waker woke (see the module's doc).
pub(crate) struct Quiet<F> {
    inner: F,
    flag: Arc<Flag>,
    /// The group's waker.
    waker: Waker,
    /// The group's wake count read before this member's last poll; `None` before the
    /// first poll and after a change through [`Quiet::get_mut`].
    seen: Option<u64>,
    /// The task waker of this member's last poll, to tell a poll by another task.
    task: Option<Waker>,
}

impl<F: Future + Unpin> Quiet<F> {
    /// The future, to change it (a timer set again); its next poll polls it.
    pub(crate) fn get_mut(&mut self) -> &mut F {
        self.seen = None;
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let wakes = this.flag.wakes.load(Ordering::Acquire);
        let same_task = this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if same_task && this.seen == Some(wakes) {
            return Poll::Pending;
        }
        // A wake takes the registered waker out: register again before each inner poll.
        this.flag.task.register(cx.waker());
        if !same_task {
            this.task = Some(cx.waker().clone());
        }
        this.seen = Some(wakes);
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// Counts its polls; ready once its notify fired.
    struct Counted {
        polls: Arc<AtomicUsize>,
        notified: Pin<Box<dyn Future<Output = ()> + Send>>,
    }

    impl Future for Counted {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.notified.as_mut().poll(cx)
        }
    }

    /// Woken many times by something else, the task polls the inner future only after
    /// each of its own wakes; two notifies in turn complete it.
    #[tokio::test]
    async fn polls_the_future_only_when_it_woke() {
        let notify = Arc::new(Notify::new());
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            polls: polls.clone(),
            notified: Box::pin({
                let notify = notify.clone();
                async move {
                    notify.notified().await;
                    notify.notified().await;
                }
            }),
        };
        let mut quiet = Signals::new().quiet(counted);
        let mut ticks = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tokio::select! {
                biased;
                () = &mut quiet => break,
                _ = tick.tick() => {
                    ticks += 1;
                    if ticks == 10 || ticks == 20 {
                        notify.notify_one();
                    }
                }
            }
        }
        assert!(ticks >= 20);
        assert_eq!(
            polls.load(Ordering::Relaxed),
            3,
            "the first poll, and one after each notify"
        );
    }

    /// A timer changed through `get_mut` is polled again, so its new deadline counts.
    #[tokio::test(start_paused = true)]
    async fn a_timer_set_again_fires_at_its_new_deadline() {
        let mut quiet = Signals::new().quiet(Box::pin(tokio::time::sleep(Duration::from_secs(60))));
        let early = tokio::time::timeout(Duration::from_secs(1), &mut quiet).await;
        assert!(early.is_err());
        let start = tokio::time::Instant::now();
        quiet.get_mut().as_mut().reset(start + Duration::from_secs(5));
        (&mut quiet).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
