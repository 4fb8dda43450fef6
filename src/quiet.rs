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
//! A [`Covered`] future is the other way round: one its own task is about to poll
//! anyway. The SDK's HTTP/2 connection is polled right after the writer that fills it,
//! and `h2` wakes the connection's task on every frame queued; without a cover, each
//! publish polled the client's connection task twice (the second time for nothing).
//! Armed before the writer runs, the cover drops the wakes its next poll answers.
//!
//! # Invariants
//!
//! - A member's future is polled at least once, and again whenever the group's waker
//!   was woken since its last poll: a wake is never lost, since the counter is read
//!   before the poll, not after.
//! - The task waker registered is the one of the last poll of any member; a wake of any
//!   member's future wakes it.
//! - A [`Covered`] future's wake is dropped only while it is armed and before its next
//!   poll starts (that poll sees what the wake announced); a wake during that poll wakes
//!   the task once the poll is done, and one when it is not armed wakes it at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The waker a [`Covered`] future is polled with.
#[derive(Default)]
struct Cover {
    /// Set by [`Covered::arm`], cleared after the next poll: the task will poll the
    /// future, so a wake need not wake it.
    armed: AtomicBool,
    /// A wake came while armed.
    woken: AtomicBool,
    /// The task that polls the future.
    task: AtomicWaker,
}

impl Wake for Cover {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Sequentially consistent with the poll's `armed` swap and `woken` load: either
        // the poll sees this wake, or this wake sees the future disarmed.
        self.woken.store(true, Ordering::SeqCst);
        if !self.armed.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// `inner`, whose wakes do not wake its task between [`Covered::arm`] and its next poll
/// (see the module's doc).
pub(crate) struct Covered<F> {
    inner: F,
    cover: Arc<Cover>,
    /// The waker `inner` is polled with.
    waker: Waker,
}

impl<F: Future + Unpin> Covered<F> {
    /// `inner`, not armed.
    pub(crate) fn new(inner: F) -> Self {
        let cover = Arc::new(Cover::default());
        Covered {
            inner,
            waker: Waker::from(cover.clone()),
            cover,
        }
    }

    /// Says that the task polls this future before it waits again: until then its
    /// wakes are dropped.
    pub(crate) fn arm(&self) {
        self.cover.armed.store(true, Ordering::SeqCst);
    }
}

impl<F: Future + Unpin> Future for Covered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.cover.task.register(cx.waker());
        // What a wake so far announced, this poll sees (the swap reads the waker's
        // store, and so everything it did before it).
        this.cover.woken.swap(false, Ordering::AcqRel);
        let polled = Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker));
        let was_armed = this.cover.armed.swap(false, Ordering::SeqCst);
        if was_armed && polled.is_pending() && this.cover.woken.load(Ordering::SeqCst) {
            // Woken during the poll itself: that wake was dropped, so poll again.
            cx.waker().wake_by_ref();
        }
        polled
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

    /// Counts the wakes of a task.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Keeps the waker of its last poll; wakes it during a poll when asked to.
    #[derive(Default)]
    struct Link {
        waker: Option<Waker>,
        polls: usize,
        wake_while_polled: bool,
    }

    impl Future for Link {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            self.waker = Some(cx.waker().clone());
            if self.wake_while_polled {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    /// The wakes of a covered future: dropped between `arm` and its poll, passed on at
    /// once when it is not armed, and passed on after the poll when it woke itself
    /// during an armed poll.
    #[test]
    fn a_covered_future_wakes_its_task_only_when_the_task_would_not_poll_it() {
        let wakes = Arc::new(TaskWakes::default());
        let task = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&task);
        let mut covered = Covered::new(Link::default());
        let woken = || wakes.0.load(Ordering::SeqCst);
        let wake_inner = |c: &Covered<Link>| c.inner.waker.clone().expect("polled").wake();

        assert!(Pin::new(&mut covered).poll(&mut cx).is_pending());
        // Not armed: a wake wakes the task.
        wake_inner(&covered);
        assert_eq!(woken(), 1);
        // Armed: the poll that follows answers the wake, the task is not woken.
        covered.arm();
        wake_inner(&covered);
        wake_inner(&covered);
        assert_eq!(woken(), 1);
        assert!(Pin::new(&mut covered).poll(&mut cx).is_pending());
        assert_eq!((woken(), covered.inner.polls), (1, 2));
        // The poll disarmed it.
        wake_inner(&covered);
        assert_eq!(woken(), 2);
        // Armed, woken during its own poll: the task is woken once, after the poll.
        covered.arm();
        covered.inner.wake_while_polled = true;
        assert!(Pin::new(&mut covered).poll(&mut cx).is_pending());
        assert_eq!(woken(), 3);
        // Not armed, woken during its poll: woken once, by the wake itself.
        assert!(Pin::new(&mut covered).poll(&mut cx).is_pending());
        assert_eq!(woken(), 4);
    }
}
