//! A stream's outbound queue: what the reader and the pumps send, and tonic's response
//! body takes. Bounded in frames (`grpc.outbound_frames`) and in bytes
//! (`grpc.outbound_bytes`), and guarded by a write deadline (`grpc.write_deadline_ms`).
//!
//! A sender waits while the queue is full; that wait is where a client that stops
//! reading is noticed, since a queue that the transport keeps taking from never stays
//! full. A send that waits longer than the write deadline kills the queue: the frames in
//! it are dropped at once (their memory released), every sender fails, and the response
//! body ends with `RESOURCE_EXHAUSTED` ("slow consumer") the next time the transport
//! polls it. The stream's owner then closes its session, which releases its
//! subscriptions' buffers; the connection itself is reaped by TCP (`TCP_USER_TIMEOUT`)
//! and HTTP/2 keepalive.
//!
//! # Invariants
//!
//! - `frames <= max_frames` and `bytes <= max_bytes`, except that one frame is always
//!   taken into an empty queue, whatever its size.
//! - Once killed or once the receiver is gone, the queue holds nothing and takes nothing.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::Status;

use crate::proto::streambus::v1 as pb;

/// One item of a response stream.
pub(crate) type Item = Result<pb::ServerFrame, Status>;

/// Bytes counted for a frame whose size the sender does not state (replies, statuses).
const SMALL_FRAME_BYTES: usize = 256;

/// Why a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The client is gone (the response body was dropped).
    Gone,
    /// The queue was killed: the client did not read for the write deadline.
    SlowConsumer,
}

/// The queue's state, behind one short lock.
struct State {
    /// Frames in send order with the bytes each was counted for.
    items: VecDeque<(Item, usize)>,
    /// Bytes counted for `items`.
    bytes: usize,
    /// The response body was dropped.
    receiver_gone: bool,
    /// Killed by the write deadline.
    killed: bool,
    /// The status still to be handed to the body after a kill.
    kill_status: Option<Status>,
    /// The body's task, when it waits on an empty queue.
    receiver: Option<Waker>,
}

/// What both ends share.
struct Shared {
    state: Mutex<State>,
    /// Most frames queued.
    max_frames: usize,
    /// Most bytes queued.
    max_bytes: usize,
    /// How long a send may wait for room; `None`: forever.
    write_deadline: Option<Duration>,
    /// Woken when room is made, and when the queue ends (killed, or receiver gone).
    room: Notify,
    /// Woken only when the queue ends: what [`Outbound::closed`] waits on, so that a
    /// stream's task is not woken by every frame the transport takes.
    ended: Notify,
    /// Live [`Outbound`] clones; the body ends once it reaches zero and the queue is
    /// empty.
    senders: AtomicUsize,
}

/// The sending end; clones share the queue.
pub(crate) struct Outbound {
    shared: Arc<Shared>,
}

/// The receiving end: tonic's response body.
pub(crate) struct OutboundStream {
    shared: Arc<Shared>,
    /// The kill status was handed out: nothing follows.
    done: bool,
}

/// A queue of at most `max_frames` frames and `max_bytes` bytes whose sends give up
/// after `write_deadline` (`None`: never).
pub(crate) fn channel(
    max_frames: usize,
    max_bytes: usize,
    write_deadline: Option<Duration>,
) -> (Outbound, OutboundStream) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            receiver_gone: false,
            killed: false,
            kill_status: None,
            receiver: None,
        }),
        max_frames: max_frames.max(1),
        max_bytes: max_bytes.max(1),
        write_deadline,
        room: Notify::new(),
        ended: Notify::new(),
        senders: AtomicUsize::new(1),
    });
    (
        Outbound { shared: shared.clone() },
        OutboundStream { shared, done: false },
    )
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Outbound {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = self.shared.state.lock().receiver.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl Outbound {
    /// Queues a small frame (a reply or the final status).
    pub(crate) async fn send(&self, item: Item) -> Result<(), SendError> {
        self.send_sized(item, SMALL_FRAME_BYTES).await
    }

    /// Queues a frame counted as `bytes`, waiting for room up to the write deadline.
    pub(crate) async fn send_sized(&self, item: Item, bytes: usize) -> Result<(), SendError> {
        let mut item = Some(item);
        let wait = async {
            loop {
                let room = self.shared.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if let Some(result) = self.try_push(&mut item, bytes) {
                    return result;
                }
                room.await;
            }
        };
        match self.shared.write_deadline {
            None => wait.await,
            Some(deadline) => match tokio::time::timeout(deadline, wait).await {
                Ok(result) => result,
                Err(_) => {
                    self.kill(deadline);
                    Err(SendError::SlowConsumer)
                }
            },
        }
    }

    /// Queues a frame only if there is room now (the `welcome`, into an empty queue).
    pub(crate) fn try_send(&self, item: Item) -> Result<(), SendError> {
        let mut item = Some(item);
        self.try_push(&mut item, SMALL_FRAME_BYTES)
            .unwrap_or(Err(SendError::Gone))
    }

    /// Pushes `item` if there is room: `Some(Ok)`; `Some(Err)` if the queue has ended;
    /// `None` if it is full.
    fn try_push(&self, item: &mut Option<Item>, bytes: usize) -> Option<Result<(), SendError>> {
        let mut st = self.shared.state.lock();
        if st.killed {
            return Some(Err(SendError::SlowConsumer));
        }
        if st.receiver_gone {
            return Some(Err(SendError::Gone));
        }
        let fits = st.items.len() < self.shared.max_frames && st.bytes + bytes <= self.shared.max_bytes;
        if !fits && !st.items.is_empty() {
            return None;
        }
        st.items.push_back((item.take()?, bytes));
        st.bytes += bytes;
        let waker = st.receiver.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Some(Ok(()))
    }

    /// Ends the queue as a slow consumer's: drops what it holds, fails every sender, and
    /// leaves the body one status to end with.
    fn kill(&self, deadline: Duration) {
        let (dropped, waker) = {
            let mut st = self.shared.state.lock();
            if st.killed || st.receiver_gone {
                return;
            }
            st.killed = true;
            st.bytes = 0;
            st.kill_status = Some(Status::resource_exhausted(format!(
                "slow consumer: the client took nothing for {} ms",
                deadline.as_millis()
            )));
            (std::mem::take(&mut st.items), st.receiver.take())
        };
        tracing::warn!(
            frames = dropped.len(),
            write_deadline_ms = deadline.as_millis() as u64,
            "slow consumer: the client stopped reading; its stream is closed"
        );
        drop(dropped);
        self.shared.room.notify_waiters();
        self.shared.ended.notify_waiters();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the queue was killed by the write deadline.
    pub(crate) fn is_killed(&self) -> bool {
        self.shared.state.lock().killed
    }

    /// Resolves once nothing can be sent any more: the client is gone or the queue was
    /// killed.
    pub(crate) async fn closed(&self) {
        loop {
            let ended = self.shared.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let st = self.shared.state.lock();
                if st.killed || st.receiver_gone {
                    return;
                }
            }
            ended.await;
        }
    }
}

impl Stream for OutboundStream {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut st = this.shared.state.lock();
        if let Some((item, bytes)) = st.items.pop_front() {
            st.bytes -= bytes;
            drop(st);
            // Room for the senders.
            this.shared.room.notify_waiters();
            return Poll::Ready(Some(item));
        }
        if st.killed {
            this.done = true;
            return Poll::Ready(st.kill_status.take().map(Err));
        }
        if this.shared.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(None);
        }
        st.receiver = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for OutboundStream {
    fn drop(&mut self) {
        let dropped = {
            let mut st = self.shared.state.lock();
            st.receiver_gone = true;
            st.bytes = 0;
            std::mem::take(&mut st.items)
        };
        drop(dropped);
        self.shared.room.notify_waiters();
        self.shared.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn frame(n: u64) -> Item {
        Ok(crate::convert::frame(pb::server_frame::Frame::Pong(pb::Pong {
            nonce: n,
        })))
    }

    fn nonce(item: Item) -> u64 {
        match item.unwrap().frame {
            Some(pb::server_frame::Frame::Pong(p)) => p.nonce,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The queue holds at most its frames and its bytes (but always one frame), and a
    /// waiting sender goes on when the body takes a frame; order is kept.
    #[tokio::test]
    async fn bounded_in_frames_and_bytes() {
        let (out, mut body) = channel(3, 1000, None);
        out.send_sized(frame(1), 600).await.unwrap();
        // Over the bytes, but the first frame alone is always taken; this one waits.
        let second = tokio::spawn({
            let out = out.clone();
            async move { out.send_sized(frame(2), 600).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        assert_eq!(nonce(body.next().await.unwrap()), 1);
        second.await.unwrap().unwrap();
        assert_eq!(nonce(body.next().await.unwrap()), 2);
        // Frames bound: three small ones fit, the fourth waits.
        for n in 3..=5 {
            out.send(frame(n)).await.unwrap();
        }
        let sixth = tokio::spawn({
            let out = out.clone();
            async move { out.send(frame(6)).await }
        });
        tokio::task::yield_now().await;
        assert!(!sixth.is_finished());
        assert_eq!(nonce(body.next().await.unwrap()), 3);
        sixth.await.unwrap().unwrap();
        drop(out);
        let rest: Vec<u64> = body.map(nonce).collect().await;
        assert_eq!(rest, [4, 5, 6], "the body ends once every sender is gone");
    }

    /// A send that finds no room for the write deadline kills the queue: what it held
    /// is dropped, every sender fails, `closed` resolves, and the body ends with
    /// RESOURCE_EXHAUSTED.
    #[tokio::test(start_paused = true)]
    async fn the_write_deadline_kills_a_stuck_queue() {
        let (out, mut body) = channel(1, 1 << 20, Some(Duration::from_secs(10)));
        out.send(frame(1)).await.unwrap();
        let other = out.clone();
        let closed = tokio::spawn(async move { other.closed().await });
        assert_eq!(out.send(frame(2)).await, Err(SendError::SlowConsumer));
        assert!(out.is_killed());
        closed.await.unwrap();
        assert_eq!(out.send(frame(3)).await, Err(SendError::SlowConsumer));
        let status = body.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(body.next().await.is_none());
    }

    /// A dropped body (the client gone) fails the senders and wakes `closed`.
    #[tokio::test]
    async fn a_dropped_body_ends_the_senders() {
        let (out, body) = channel(4, 1 << 20, None);
        out.send(frame(1)).await.unwrap();
        drop(body);
        out.closed().await;
        assert_eq!(out.send(frame(2)).await, Err(SendError::Gone));
    }
}
