//! What a [`super::Client`], its subscriptions and its tasks share: the request queue of
//! the current connection, the requests waiting for an answer, and the live
//! subscriptions with their server ids.
//!
//! # Invariants
//!
//! - `pending` holds each request id at most once; an entry leaves it exactly once: by
//!   its reply frame (see [`super::router`]), or through [`Shared::fail_pending`] when
//!   its connection is lost.
//! - `by_server_id` maps exactly the subscriptions the current connection's server
//!   confirmed; [`State::begin_connection`] empties it, and each `subscribed` frame of
//!   the new connection fills it again.
//! - The state lock is never held across an `.await`.
//! - A connection's request queue holds at most [`super::REQUEST_QUEUE_FRAMES`] frames
//!   and, but for a single larger frame, [`super::REQUEST_QUEUE_BYTES`] bytes: a sender
//!   takes a frame's bytes from the queue's [`Room`] before queueing it, and the
//!   writer gives them back as it takes the frame.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use streambus_types::{CloseReason, Event};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::call::framed;
use super::{ClientError, ClientOptions, Credit, Welcome};
use crate::proto::streambus::v1 as pb;
use pb::client_frame::Frame as Out;

/// A request waiting for its reply frame; its sender is answered exactly once.
pub(super) enum Pending {
    /// A subscribe (or a resubscribe after a reconnect, whose reply nobody awaits) for
    /// the client's subscription `local`.
    Subscribe {
        local: u64,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// An unsubscribe the application awaits.
    Unsubscribe(oneshot::Sender<Result<(), ClientError>>),
    /// An acked publish: the number of messages admitted, or the refusal.
    Publish(oneshot::Sender<Result<u64, ClientError>>),
    /// A ping the application awaits (the keepalive pings register nothing).
    Ping(oneshot::Sender<()>),
}

/// A subscription as the client remembers it, to resubscribe after a reconnect.
pub(super) struct LiveSubscription {
    /// The subscribe request as first sent (its request id is replaced on each send).
    pub(super) request: pb::Subscribe,
    /// Event batches to the [`super::ClientSubscription`], the only receiver; capacity
    /// [`super::SUBSCRIPTION_QUEUE_BATCHES`]. The connection's reader waits when it is
    /// full, which is the client's backpressure on the server. A closed receiver (the
    /// subscription dropped) makes sends fail, and they are ignored.
    pub(super) events: mpsc::Sender<Vec<Event>>,
    /// The server's id on the current connection, once subscribed.
    pub(super) server_id: Option<u64>,
}

/// The mutable part of [`Shared`], behind one lock.
#[derive(Default)]
pub(super) struct State {
    /// By request id (subscribe, unsubscribe, ping) or publish id.
    pub(super) pending: HashMap<u64, Pending>,
    /// By the client's own subscription id, stable across reconnects.
    pub(super) subscriptions: HashMap<u64, LiveSubscription>,
    /// Server subscription id → client subscription id, for the current connection.
    pub(super) by_server_id: HashMap<u64, u64>,
    /// The current connection's `welcome`.
    pub(super) welcome: Option<Welcome>,
}

impl State {
    /// Starts a new connection's view: its `welcome`, no confirmed subscriptions, and one
    /// pending subscribe per live subscription, under ids from `next_id`. Returns the
    /// subscribe frames to send, in no particular order.
    ///
    /// The resubscribes' replies are awaited by nobody: a `subscribed` frame maps the
    /// new server id, an `error` frame ends the subscription's stream.
    pub(super) fn begin_connection(
        &mut self,
        welcome: Welcome,
        mut next_id: impl FnMut() -> u64,
    ) -> Vec<pb::Subscribe> {
        self.welcome = Some(welcome);
        self.by_server_id.clear();
        let mut frames = Vec::with_capacity(self.subscriptions.len());
        for (local, s) in &mut self.subscriptions {
            s.server_id = None;
            let request_id = next_id();
            let (reply, _) = oneshot::channel();
            self.pending
                .insert(request_id, Pending::Subscribe { local: *local, reply });
            frames.push(pb::Subscribe {
                request_id,
                ..s.request.clone()
            });
        }
        frames
    }

    /// The event sender of the subscription the server calls `server_id`, if any.
    pub(super) fn events_of(&self, server_id: u64) -> Option<mpsc::Sender<Vec<Event>>> {
        self.by_server_id
            .get(&server_id)
            .and_then(|local| self.subscriptions.get(local))
            .map(|s| s.events.clone())
    }
}

/// A connection's request queue as its senders see it: the channel of encoded frames,
/// and the bytes it may hold.
#[derive(Clone)]
pub(super) struct Queue {
    /// Frames in gRPC's framing, to the connection's writer.
    pub(super) frames: mpsc::Sender<Bytes>,
    /// The bytes queued and the room left.
    pub(super) room: Arc<Room>,
}

/// The bytes of frames a connection's request queue holds, shared by its senders (who
/// take room before queueing a frame) and its writer (who gives it back as it takes the
/// frame). Closed with the connection: the frames left in its queue are never written,
/// and whoever waits for room goes on to the next connection.
#[derive(Debug)]
pub(super) struct Room {
    /// Bytes queued: taken and not given back.
    queued: AtomicUsize,
    /// Most bytes queued, but for a single larger frame in an empty queue.
    budget: usize,
    /// Senders waiting for room; the writer wakes them only when there are some.
    waiting: AtomicUsize,
    /// Room given back (or the queue closed).
    freed: Notify,
    /// Set once the connection ended.
    closed: AtomicBool,
}

impl Room {
    /// Room for `budget` bytes.
    pub(super) fn new(budget: usize) -> Arc<Room> {
        Arc::new(Room {
            queued: AtomicUsize::new(0),
            budget,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Takes room for `n` bytes if the queue has it now (any frame fits an empty queue).
    fn try_take(&self, n: usize) -> bool {
        let mut queued = self.queued.load(Ordering::SeqCst);
        loop {
            if queued != 0 && queued.saturating_add(n) > self.budget {
                return false;
            }
            match self
                .queued
                .compare_exchange_weak(queued, queued + n, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => queued = now,
            }
        }
    }

    /// Waits for room for `n` bytes and takes it; `false` if the connection ended first.
    async fn take(&self, n: usize) -> bool {
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            // Counted before looking again, so that a give-back from now on wakes this.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let closed = self.closed.load(Ordering::SeqCst);
            let took = !closed && self.try_take(n);
            if !(closed || took) {
                freed.await;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if closed || took {
                return took;
            }
        }
    }

    /// Gives back room for `n` bytes: the writer took frames of that many, or a sender
    /// could not queue its frame after all.
    pub(super) fn give(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// The connection ended: nobody gives room back any more; waiters go on.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.freed.notify_waiters();
    }
}

/// Everything a client's clones, subscriptions and tasks share.
pub(super) struct Shared {
    /// How the client connects (read only).
    pub(super) options: ClientOptions,
    /// Request ids, publish ids, client subscription ids and ping nonces: one counter,
    /// so no two are ever equal.
    next_id: AtomicU64,
    /// See [`State`]; a std mutex, held briefly and never across an `.await`.
    state: Mutex<State>,
    /// The current connection's request queue of encoded frames (capacity
    /// [`super::REQUEST_QUEUE_FRAMES`] frames and [`super::REQUEST_QUEUE_BYTES`] bytes);
    /// `None` while (re)connecting. Publishers and
    /// requests wait on it; only the driver replaces it. Sending `None` (close, or a lost
    /// connection) drops the queue's sender, which ends the request stream (CloseSend).
    pub(super) frames: watch::Sender<Option<Queue>>,
    /// Set by [`Shared::close`]; never cleared.
    pub(super) closed: AtomicBool,
    /// Deliveries taken by the application since the last window grant.
    pub(super) consumed: AtomicU64,
    /// Fire-and-forget publishes (and other id-less frames) the server refused.
    pub(super) refused: AtomicU64,
    /// Successful reconnects.
    pub(super) reconnects: AtomicU64,
}

impl Shared {
    /// State for a client with `options`, not connected yet.
    pub(super) fn new(options: ClientOptions) -> Arc<Self> {
        let (frames, _) = watch::channel(None);
        Arc::new(Shared {
            options,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            frames,
            closed: AtomicBool::new(false),
            consumed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        })
    }

    /// The state, locked. A panic while it was held cannot leave it half-changed in a
    /// way that matters (every change is one map operation), so poisoning is ignored.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the client: no more sends, and the request stream ends.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.frames.send_replace(None);
    }

    /// Whether [`Shared::close`] was called.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A fresh id.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a frame on the current connection at once if it has room; hands the frame
    /// back otherwise (no connection, a full or closed queue, a closed client).
    fn try_send(&self, frame: Bytes) -> Result<(), Bytes> {
        if self.is_closed() {
            return Err(frame);
        }
        // The watch's lock is held for the `try_send` only, never across an `.await`.
        let current = self.frames.borrow();
        let Some(queue) = &*current else {
            return Err(frame);
        };
        let n = frame.len();
        if !queue.room.try_take(n) {
            return Err(frame);
        }
        queue.frames.try_send(frame).map_err(|e| {
            queue.room.give(n);
            match e {
                mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f) => f,
            }
        })
    }

    /// Queues a frame on the current connection, waiting for room, or for a connection
    /// if reconnecting.
    pub(super) async fn send(&self, frame: Out) -> Result<(), ClientError> {
        self.send_encoded(framed(frame)).await
    }

    /// [`Shared::send`] for a frame already in gRPC's framing (a publish).
    pub(super) async fn send_encoded(&self, frame: Bytes) -> Result<(), ClientError> {
        // Most sends find room: no subscription to the watch, no sender clone.
        let Err(mut frame) = self.try_send(frame) else {
            return Ok(());
        };
        let mut frames = self.frames.subscribe();
        loop {
            if self.is_closed() {
                return Err(ClientError::Closed);
            }
            // A close (or the end of a client that does not reconnect) wakes this too.
            let current = {
                let guard = frames
                    .wait_for(|frames| frames.is_some() || self.is_closed())
                    .await
                    .map_err(|_| ClientError::Closed)?;
                guard.clone()
            };
            let Some(queue) = current else { continue };
            let n = frame.len();
            // Room first, then a place in the channel; either fails only when that
            // connection died meanwhile: wait for the next one.
            if queue.room.take(n).await {
                match queue.frames.send(frame).await {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::SendError(f)) => {
                        queue.room.give(n);
                        frame = f;
                    }
                }
            }
            let _ = frames.changed().await;
        }
    }

    /// Sends a request and waits for its reply.
    pub(super) async fn request<T>(
        &self,
        id: u64,
        pending: impl FnOnce(oneshot::Sender<T>) -> Pending,
        frame: Out,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.state().pending.insert(id, pending(tx));
        if let Err(e) = self.send(frame).await {
            self.state().pending.remove(&id);
            return Err(e);
        }
        rx.await.map_err(|_| ClientError::Disconnected)
    }

    /// Counts a delivery taken by the application; with a credit window, grants credit
    /// back once half the window is used.
    pub(super) fn consumed(self: &Arc<Self>, n: u64) {
        let Credit::Window(window) = self.options.credit else {
            return;
        };
        let total = self.consumed.fetch_add(n, Ordering::AcqRel) + n;
        let half = (window / 2).max(1);
        if total >= half
            && self
                .consumed
                .compare_exchange(total, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let shared = self.clone();
            tokio::spawn(async move {
                let _ = shared.send(Out::Credit(pb::CreditGrant { credits: total })).await;
            });
        }
    }

    /// Answers every pending request with `Disconnected` (the connection is lost).
    pub(super) fn fail_pending(&self) {
        let pending: Vec<Pending> = self.state().pending.drain().map(|(_, p)| p).collect();
        for p in pending {
            match p {
                Pending::Subscribe { reply, .. } | Pending::Unsubscribe(reply) => {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
                Pending::Publish(reply) => {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
                Pending::Ping(_) => {}
            }
        }
    }

    /// Ends every subscription stream with `reason` (the client is done for good).
    pub(super) fn close_subscriptions(&self, reason: CloseReason) {
        let subscriptions: Vec<LiveSubscription> = self.state().subscriptions.drain().map(|(_, s)| s).collect();
        for s in subscriptions {
            let _ = s.events.try_send(vec![Event::Closed(reason)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A send waiting for a connection fails once the client is closed (as it is when a
    /// client that does not reconnect loses its connection), instead of waiting forever.
    #[tokio::test]
    async fn a_waiting_send_fails_on_close() {
        let shared = Shared::new(ClientOptions::new("http://127.0.0.1:1"));
        let waiting = tokio::spawn({
            let shared = shared.clone();
            async move { shared.send(Out::Ping(pb::Ping { nonce: 1 })).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no connection yet: the send waits");
        shared.close();
        assert!(matches!(waiting.await.unwrap(), Err(ClientError::Closed)));
    }

    /// A send finds room at once or waits for it; either way frames keep their order,
    /// and a send to a closed client fails.
    #[tokio::test]
    async fn sends_wait_for_room_in_order() {
        let shared = Shared::new(ClientOptions::new("http://127.0.0.1:1"));
        let (frames, mut rx) = mpsc::channel(1);
        let room = Room::new(1 << 20);
        shared.frames.send_replace(Some(Queue { frames, room }));
        let ping = |nonce| Out::Ping(pb::Ping { nonce });
        shared.send(ping(1)).await.unwrap();
        let second = tokio::spawn({
            let shared = shared.clone();
            async move { shared.send(ping(2)).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the queue is full: the second send waits");
        let nonce = |f: Option<Bytes>| match f.map(super::super::call::unframed) {
            Some(Out::Ping(p)) => p.nonce,
            other => panic!("expected a ping, got {other:?}"),
        };
        assert_eq!(nonce(rx.recv().await), 1);
        second.await.unwrap().unwrap();
        assert_eq!(nonce(rx.recv().await), 2);
        shared.close();
        assert!(matches!(shared.send(ping(3)).await, Err(ClientError::Closed)));
    }

    /// A client with a connection whose queue takes `frames` frames and `budget` bytes;
    /// returns the queue's receiving end and its room.
    fn queue_of(shared: &Shared, frames: usize, budget: usize) -> (mpsc::Receiver<Bytes>, Arc<Room>) {
        let (tx, rx) = mpsc::channel(frames);
        let room = Room::new(budget);
        shared.frames.send_replace(Some(Queue {
            frames: tx,
            room: room.clone(),
        }));
        (rx, room)
    }

    /// The queue holds at most its budget in bytes, whatever its frame count: a send
    /// beyond it waits until the writer takes frames and gives their bytes back, and
    /// frames keep their order. A frame larger than the budget goes alone, once the
    /// queue is empty.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let shared = Shared::new(ClientOptions::new("http://127.0.0.1:1"));
        let (mut rx, room) = queue_of(&shared, 64, 100);
        let frame = |tag: u8, len: usize| Bytes::from(vec![tag; len]);
        shared.send_encoded(frame(1, 60)).await.unwrap();
        shared.send_encoded(frame(2, 40)).await.unwrap();
        let third = tokio::spawn({
            let shared = shared.clone();
            async move { shared.send_encoded(frame(3, 10)).await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "100 bytes queued: the next frame waits for room");
        // The writer takes the first frame and gives its bytes back.
        let first = rx.recv().await.unwrap();
        assert_eq!(first[0], 1);
        room.give(first.len());
        third.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap()[0], 2);
        let got = rx.recv().await.unwrap();
        assert_eq!(got[0], 3);
        room.give(40 + got.len());
        // Empty again: a frame over the budget goes alone, and holds the room.
        shared.send_encoded(frame(4, 500)).await.unwrap();
        let after = tokio::spawn({
            let shared = shared.clone();
            async move { shared.send_encoded(frame(5, 1)).await }
        });
        tokio::task::yield_now().await;
        assert!(!after.is_finished(), "a frame over the budget fills the queue");
        room.give(rx.recv().await.unwrap().len());
        after.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap()[0], 5);
    }

    /// A send waiting for room on a connection that ends goes on to the next
    /// connection's queue; nothing is lost and nothing hangs.
    #[tokio::test]
    async fn a_send_waiting_for_room_moves_to_the_next_connection() {
        let shared = Shared::new(ClientOptions::new("http://127.0.0.1:1"));
        let (_old_rx, old_room) = queue_of(&shared, 64, 10);
        shared.send_encoded(Bytes::from_static(b"0123456789")).await.unwrap();
        let waiting = tokio::spawn({
            let shared = shared.clone();
            async move { shared.send_encoded(Bytes::from_static(b"next")).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The connection ends (as the driver ends one), then a new one opens.
        old_room.close();
        shared.frames.send_replace(None);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no connection yet: the send waits");
        let (mut rx, _room) = queue_of(&shared, 64, 10);
        let sent = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        sent.expect("the waiting send went on to the new connection")
            .unwrap()
            .unwrap();
        assert_eq!(&rx.recv().await.unwrap()[..], b"next");
    }
}
