//! `stream.ChatService/BidirectionalChat`: the original article's echo service, served
//! through the bus's actors rather than beside them.
//!
//! Each chat stream is a `Session` actor. It subscribes (policy `block`, so nothing is
//! ever dropped) to its own system topic `$chat.<session id>` and publishes every
//! incoming message there; each delivery is answered with content `"echo: " + content`
//! and timestamp = now in unix seconds, exactly as the article's Go server does. The
//! echoes therefore travel the bus's real hot path (session, topic actor, admission,
//! subscriber buffer), in order, with end-to-end backpressure: a client that stops
//! reading stops taking echoes, its stream's echo credits run out, the reader stops
//! reading the client, and HTTP/2 flow control makes the client's sends wait.
//!
//! A light reader task publishes what the client sends; the response body itself, a
//! [`ChatStream`], takes the echoes from the subscription. No task or channel stands
//! between the topic actor and the transport, and the transport's body is polled once
//! per echo, as in a plain tonic handler: a message costs the reader's and the topic
//! actor's wake-ups on top of that path.
//!
//! The client ending its stream (`CloseSend`) closes the session gracefully: every
//! message sent before it is still echoed, then the stream ends OK. A failure (bad
//! frame, the server shutting down) ends it the same way, with that status last.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::Stream;
use futures::task::AtomicWaker;
use streambus_core::{SessionHandle, Subscription};
use streambus_types::{Event, Message, OverflowPolicy, SubscriptionOptions, Topic};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::Context;
use crate::convert;
use crate::proto::stream as chat;

/// Echoes in flight per chat stream (messages) before the reader waits.
const CHAT_BUFFER_MESSAGES: usize = 1024;

/// The echo service.
#[derive(Clone)]
pub struct ChatService {
    /// The bus, the settings and the server's stop signal.
    context: Context,
}

impl std::fmt::Debug for ChatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatService").finish_non_exhaustive()
    }
}

impl ChatService {
    pub(crate) fn new(context: Context) -> Self {
        ChatService { context }
    }
}

#[tonic::async_trait]
impl chat::chat_service_server::ChatService for ChatService {
    type BidirectionalChatStream = ChatStream;

    async fn bidirectional_chat(
        &self,
        request: Request<Streaming<chat::Message>>,
    ) -> Result<Response<ChatStream>, Status> {
        let context = self.context.clone();
        let options = context.connect_options("chat", &context.credentials(&request)).await?;
        let session = context.bus.connect(options).await.map_err(|e| convert::status(&e))?;
        let topic = match Topic::new(&format!("$chat.{}", session.id())) {
            Ok(t) => t,
            Err(e) => {
                let _ = session.close().await;
                return Err(Status::internal(format!("chat topic: {e}")));
            }
        };
        let options = SubscriptionOptions::default()
            .overflow(OverflowPolicy::Block)
            .buffer(CHAT_BUFFER_MESSAGES, context.bus.config().subscriptions.buffer_bytes);
        let echoes = match session.subscribe(topic.as_str(), options).await {
            Ok(s) => s,
            Err(e) => {
                let _ = session.close().await;
                return Err(convert::status(&e));
            }
        };
        let (failure_tx, failure) = oneshot::channel();
        let credits = Arc::new(EchoCredits::new(CHAT_BUFFER_MESSAGES));
        let span = tracing::info_span!("chat", session = session.id().0);
        let reader = read(
            context,
            session.clone(),
            topic,
            request.into_inner(),
            credits.clone(),
            failure_tx,
        );
        tokio::spawn(reader.instrument(span));
        Ok(Response::new(ChatStream {
            echoes,
            credits,
            failure,
            session,
            ended: false,
        }))
    }
}

/// Publishes every chat message on the session's topic; closes the session when the
/// client is done or gone, a publish fails or the server stops, and hands the stream's
/// final status (if it is not OK) to the [`ChatStream`].
async fn read(
    context: Context,
    session: SessionHandle,
    topic: Topic,
    mut inbound: Streaming<chat::Message>,
    credits: Arc<EchoCredits>,
    failure: oneshot::Sender<Status>,
) {
    // Made once for the stream, not once per message (see `Stopping`).
    let mut stopping = pin!(context.stopping());
    let shutting_down = || Some(Status::unavailable("server shutting down"));
    let status = loop {
        let next = poll_fn(|cx| {
            if stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut inbound).poll_next(cx).map(Some)
        })
        .await;
        match next {
            None => break shutting_down(),
            Some(Some(Ok(message))) => {
                // A client that does not read its echoes is held here.
                let credit = poll_fn(|cx| {
                    if stopping.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    credits.poll_take(cx).map(Some)
                })
                .await;
                match credit {
                    None => break shutting_down(),
                    // The response is gone, and the client with it.
                    Some(false) => break None,
                    Some(true) => {}
                }
                if let Err(e) = session
                    .publish_message(Message::new(topic.clone(), message.content))
                    .await
                {
                    break Some(convert::status(&e));
                }
            }
            Some(Some(Err(status))) => break Some(status),
            Some(None) => break None,
        }
    };
    // Graceful: everything published is echoed before the stream ends. Boxed, so that
    // every open stream's task does not hold room for its ending.
    let _ = Box::pin(session.close()).await;
    if let Some(status) = status {
        let _ = failure.send(status);
    }
}

/// Echoes a chat stream may have in flight (published and not yet handed to the
/// transport): the reader takes one per message, the response returns one per echo.
/// This bounds what a client that does not read can leave on the server to
/// [`CHAT_BUFFER_MESSAGES`] messages plus its HTTP/2 window, far below the topic's own
/// admission (meant for topics shared by many publishers).
struct EchoCredits {
    available: AtomicUsize,
    capacity: usize,
    /// The reader, when it waits for a credit.
    reader: AtomicWaker,
    /// Set when the response is dropped.
    closed: AtomicBool,
}

impl EchoCredits {
    fn new(n: usize) -> Self {
        EchoCredits {
            available: AtomicUsize::new(n),
            capacity: n,
            reader: AtomicWaker::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Takes one credit: `Ready(true)`, or `Ready(false)` once the response is gone
    /// (no credit will come back), or `Pending` until one is given back.
    fn poll_take(&self, cx: &mut TaskContext<'_>) -> Poll<bool> {
        if self.try_take() {
            return Poll::Ready(true);
        }
        if self.closed.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        self.reader.register(cx.waker());
        // A credit returned (or the close) between the check and the registration is
        // seen here.
        if self.try_take() {
            Poll::Ready(true)
        } else if self.closed.load(Ordering::Acquire) {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }

    /// The response is gone: a waiting reader stops waiting.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn try_take(&self) -> bool {
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Returns one credit. Never beyond the capacity: a delivery the reader did not
    /// publish (someone else's message on the chat topic) does not widen the bound.
    fn give_back(&self) {
        let before = self.available.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.capacity).then_some(n + 1)
        });
        if before == Ok(0) {
            self.reader.wake();
        }
    }
}

/// The response of one chat stream: the echoes, then the reader's failure if any.
pub struct ChatStream {
    /// The stream's own `$chat.<id>` subscription (`block`): every message the reader
    /// published, in order, to be answered.
    echoes: Subscription,
    /// Shared with the reader: one is given back per echo handed to the transport.
    credits: Arc<EchoCredits>,
    /// The status to end with after the last echo, from the reader (its only sender);
    /// closed with nothing sent when the stream ends OK.
    failure: oneshot::Receiver<Status>,
    /// The stream's session, closed when the response is dropped.
    session: SessionHandle,
    /// The final item has been returned; the stream yields nothing more.
    ended: bool,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("session", &self.session.id())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Stream for ChatStream {
    type Item = Result<chat::Message, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut this.echoes).poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Event::Delivery(delivery))) => {
                    this.credits.give_back();
                    Poll::Ready(Some(Ok(chat::Message {
                        content: echo_of(&delivery.payload),
                        timestamp: unix_seconds(),
                    })))
                }
                // Unreachable with the block policy; reported, never silent.
                Poll::Ready(Some(Event::Gap(gap))) => {
                    tracing::error!(dropped = gap.dropped, "chat echoes lost");
                    continue;
                }
                // The session closed and every echo is out: end with the reader's status.
                Poll::Ready(Some(Event::Closed(_)) | None) => match Pin::new(&mut this.failure).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(status) => {
                        this.ended = true;
                        Poll::Ready(status.ok().map(Err))
                    }
                },
            };
        }
    }
}

impl Drop for ChatStream {
    /// The client went away, or the server dropped the stream: the session closes, which
    /// also ends the reader.
    fn drop(&mut self) {
        self.credits.close();
        if self.ended || !self.session.is_open() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            runtime.spawn(async move {
                let _ = session.close().await;
            });
        }
    }
}

/// `"echo: " + content`. Contents arrive as UTF-8 (a proto3 string); anything else on
/// the topic is shown with replacement characters rather than refused.
fn echo_of(payload: &[u8]) -> String {
    let mut content = String::with_capacity(ECHO_PREFIX.len() + payload.len());
    content.push_str(ECHO_PREFIX);
    match std::str::from_utf8(payload) {
        Ok(text) => content.push_str(text),
        Err(_) => content.push_str(&String::from_utf8_lossy(payload)),
    }
    content
}

/// What the article's server puts before each echoed content.
const ECHO_PREFIX: &str = "echo: ";

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Echo credits run out, a waiting reader is woken by the first one given back, giving
    /// back more than was taken never raises the bound, and closing lets a waiter go.
    #[tokio::test]
    async fn credits_bound_the_reader() {
        let credits = Arc::new(EchoCredits::new(2));
        let take = |credits: Arc<EchoCredits>| async move { poll_fn(|cx| credits.poll_take(cx)).await };
        assert!(take(credits.clone()).await && take(credits.clone()).await);
        let waiting = tokio::spawn(take(credits.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no credit left");
        credits.give_back();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap()
        );
        for _ in 0..5 {
            credits.give_back();
        }
        assert!(credits.try_take() && credits.try_take());
        assert!(!credits.try_take(), "never more than the capacity");
        // Closed (the response is gone): a waiting reader is let go, with no credit.
        let waiting = tokio::spawn(take(credits.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        credits.close();
        assert!(
            !tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap()
        );
    }

    /// The echo is the article's: the prefix, then the content; bytes that are not UTF-8
    /// are shown, not refused.
    #[test]
    fn echo_is_prefix_and_content() {
        assert_eq!(echo_of(b"hello"), "echo: hello");
        assert_eq!(echo_of(b""), "echo: ");
        assert_eq!(echo_of(&[0x66, 0xff]), "echo: f\u{fffd}");
    }
}
