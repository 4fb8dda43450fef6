//! `stream.ChatService/BidirectionalChat`: the original article's echo service, served
//! through the bus's actors rather than beside them.
//!
//! Each chat stream is a `Session` actor. It subscribes (policy `block`, so nothing is
//! ever dropped) to its own system topic `$chat.<session id>` and publishes every
//! incoming message there; each delivery is answered with content `"echo: " + content`
//! and timestamp = now in unix seconds, exactly as the article's Go server does. The
//! echoes therefore travel the bus's real hot path (session, topic, admission,
//! subscriber buffer), in order, with end-to-end backpressure.
//!
//! The response body itself, a [`ChatStream`], does all of a stream's work, as a plain
//! tonic handler's body would: polled by the transport, it hands over the echoes that
//! are ready, then reads what the client sent and publishes it. No task or channel of
//! its own stands between the client and the bus, so a message costs the transport's
//! wake-ups and the bus's publish and fan-out, nothing more; and a client that stops
//! reading stops the transport from polling the body, so its messages stay unread and
//! HTTP/2 flow control makes its sends wait. Echoes in flight (published, not yet handed
//! to the transport) are bounded on top of that by [`CHAT_BUFFER_MESSAGES`].
//!
//! The client ending its stream (`CloseSend`) closes the session gracefully: every
//! message sent before it is still echoed, then the stream ends OK. A failure (bad
//! frame, a refused publish, the server shutting down) ends it the same way, with that
//! status last.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::Stream;
use streambus_core::{BatchEvent, BusError, DeliveryRun, SessionHandle, Subscription, TopicRoute};
use streambus_types::{Message, OverflowPolicy, SubscriptionOptions, Topic};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::Context;
use super::shutdown::Stopping;
use crate::convert;
use crate::proto::stream as chat;

/// Echoes in flight per chat stream (published, not yet handed to the transport) before
/// the stream stops reading the client. This bounds what a client that does not read can
/// leave on the server to this many messages plus its HTTP/2 window, far below the
/// topic's own admission (meant for topics shared by many publishers).
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
        let context = &self.context;
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
        Ok(Response::new(ChatStream {
            span: tracing::info_span!("chat", session = session.id().0),
            echoes,
            run: None,
            unpublished: None,
            inbound: Some(request.into_inner()),
            stopping: context.stopping(),
            session: Arc::new(session),
            topic,
            route: TopicRoute::default(),
            pending: None,
            in_flight: 0,
            status: None,
            ended: false,
        }))
    }
}

/// A publish, or the session's close, in progress.
type InProgress = Pin<Box<dyn Future<Output = Result<(), BusError>> + Send>>;

/// One chat stream, as the body of its response: it reads the client's messages and
/// publishes them on the session's topic, and answers each delivery from that topic.
///
/// Each poll hands over a ready echo first (it frees room for what the client sends
/// next), then drives the publish or close in progress, then reads the client. Once the
/// client is done or gone, a publish fails or the server stops, it stops reading and
/// closes the session; the echoes of everything published still go out, then the
/// stream ends, with the failure's status if there was one.
pub struct ChatStream {
    /// The stream's span: the parent of what the stream itself logs, and entered by the
    /// session's close. Not entered on every poll: what the publish path can log (a
    /// denied publish, a session close that timed out) names the `$chat.<id>` topic or
    /// the session already, and entering and leaving an enabled span costs about as much
    /// as a fifth of the bus's own work for one echo.
    span: tracing::Span,
    /// The stream's own `$chat.<id>` subscription (`block`): every message published,
    /// in order, to be answered.
    echoes: Subscription,
    /// The deliveries taken from `echoes` and not yet answered, read in place.
    run: Option<DeliveryRun>,
    /// A message read from the client and not yet published: an echo was ready first.
    unpublished: Option<Message>,
    /// The client's messages; `None` once the stream stopped reading them.
    inbound: Option<Streaming<chat::Message>>,
    /// Resolves when the server starts shutting down.
    stopping: Stopping,
    /// The stream's session: publishes on `topic`, closed when the stream stops reading
    /// or the response is dropped. Shared with the publish in progress.
    session: Arc<SessionHandle>,
    /// `$chat.<session id>`.
    topic: Topic,
    /// The way to `topic`'s entry, kept between publishes.
    route: TopicRoute,
    /// The publish that had to wait (at most one, and nothing is read meanwhile: the
    /// client's order is the topic's), or, once reading stopped, the session's close.
    pending: Option<InProgress>,
    /// Messages published and not yet echoed (at most [`CHAT_BUFFER_MESSAGES`]).
    in_flight: usize,
    /// The status to end with after the last echo, if the stream does not end OK.
    status: Option<Status>,
    /// The final item has been returned; the stream yields nothing more.
    ended: bool,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("session", &self.session.id())
            .field("in_flight", &self.in_flight)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl ChatStream {
    /// Stops reading the client (for good) and closes the session gracefully; `status`
    /// is what the stream ends with after the last echo, if not OK.
    fn stop_reading(&mut self, status: Option<Status>) {
        self.inbound = None;
        if self.status.is_none() {
            self.status = status;
        }
        let session = self.session.clone();
        // Boxed, as a publish that has to wait is: the stream's own state holds no room
        // for either.
        self.pending = Some(Box::pin(
            async move { session.close().await }.instrument(self.span.clone()),
        ));
    }
}

impl ChatStream {
    /// The next echo, or the stream's end once the session closed (with the stream's
    /// status, if not OK); `Pending` while none is ready.
    fn poll_echo(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<chat::Message, Status>>> {
        loop {
            if let Some(delivery) = self.run.as_mut().and_then(DeliveryRun::next_delivery) {
                // A delivery nobody here published (someone else's message on the chat
                // topic) is answered too, and does not widen the bound.
                self.in_flight = self.in_flight.saturating_sub(1);
                return Poll::Ready(Some(Ok(chat::Message {
                    content: echo_of(&delivery.payload),
                    timestamp: unix_seconds(),
                })));
            }
            self.run = None;
            return match self.echoes.poll_batch(cx) {
                Poll::Ready(Some(BatchEvent::Deliveries(run))) => {
                    self.run = Some(run);
                    continue;
                }
                // Unreachable with the block policy; reported, never silent.
                Poll::Ready(Some(BatchEvent::Gap(gap))) => {
                    tracing::error!(parent: &self.span, dropped = gap.dropped, "chat echoes lost");
                    continue;
                }
                // The session closed and every echo is out.
                Poll::Ready(Some(BatchEvent::Closed(_)) | None) => {
                    self.ended = true;
                    Poll::Ready(self.status.take().map(Err))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl Stream for ChatStream {
    type Item = Result<chat::Message, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        this.work(cx)
    }
}

impl ChatStream {
    /// One poll's work: drives the publish or close in progress, reads the client and
    /// publishes what it sent, handing over each echo as soon as it is ready; waits for
    /// the next echo once there is nothing to do.
    ///
    /// The subscription is looked at only where an echo can have come: after a publish,
    /// before one (see below), and last, with this task's waker. A poll with nothing to
    /// read (the transport asking for more, or telling of room to send) costs one look.
    fn work(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<chat::Message, Status>>> {
        // Looks before and after a publish leave the subscription a waker that wakes
        // nothing: the publish this poll makes would otherwise wake the very task that
        // makes it, for one more poll of it per message. This task's waker goes back
        // with the last look, below.
        let mut quiet = TaskContext::from_waker(futures::task::noop_waker_ref());
        loop {
            if let Some(pending) = &mut self.pending {
                let Poll::Ready(result) = pending.as_mut().poll(cx) else {
                    break;
                };
                self.pending = None;
                match result {
                    Err(e) if self.inbound.is_some() => self.stop_reading(Some(convert::status(&e))),
                    // Published; or closed (a close that finds the session already
                    // closed changes nothing: the echoes end all the same).
                    _ => {}
                }
                if let Poll::Ready(item) = self.poll_echo(&mut quiet) {
                    return Poll::Ready(item);
                }
                continue;
            }
            let message = match self.unpublished.take() {
                Some(message) => message,
                None => match self.read(cx) {
                    Some(message) => message,
                    None if self.pending.is_some() => continue,
                    None => break,
                },
            };
            // Before publishing: an echo that came meanwhile goes out first, the message
            // is published at the next poll.
            if let Poll::Ready(item) = self.poll_echo(&mut quiet) {
                self.unpublished = Some(message);
                return Poll::Ready(item);
            }
            self.in_flight += 1;
            // Published then and there when nothing makes it wait (its echo is then
            // ready); otherwise the publish waits here, and nothing more is read.
            match self.session.publish_now_on(message, &mut self.route) {
                Ok(None) => {
                    if let Poll::Ready(item) = self.poll_echo(&mut quiet) {
                        return Poll::Ready(item);
                    }
                }
                Ok(Some(message)) => {
                    let session = self.session.clone();
                    self.pending = Some(Box::pin(async move { session.publish_message(message).await }));
                }
                Err(e) => self.stop_reading(Some(convert::status(&e))),
            }
        }
        // Nothing more to do now: wait for the next echo (one that came meanwhile is
        // taken here).
        self.poll_echo(cx)
    }

    /// The client's next message, as a message for the chat topic; `None` when there is
    /// none to read now, or reading stopped (with the session's close then in progress).
    fn read(&mut self, cx: &mut TaskContext<'_>) -> Option<Message> {
        let inbound = self.inbound.as_mut()?;
        if Pin::new(&mut self.stopping).poll(cx).is_ready() {
            self.stop_reading(Some(Status::unavailable("server shutting down")));
            return None;
        }
        if self.in_flight >= CHAT_BUFFER_MESSAGES {
            // A client that does not read its echoes is held here; the next echo
            // handed over wakes the stream.
            return None;
        }
        // Each message read spends a unit of the task's cooperative budget, so a client
        // that keeps its window full cannot hold the worker thread.
        let Poll::Ready(turn) = tokio::task::coop::poll_proceed(cx) else {
            return None;
        };
        match Pin::new(inbound).poll_next(cx) {
            Poll::Pending => None,
            Poll::Ready(Some(Ok(message))) => {
                turn.made_progress();
                Some(Message::new(self.topic.clone(), message.content))
            }
            Poll::Ready(Some(Err(status))) => {
                self.stop_reading(Some(status));
                None
            }
            // The client is done: everything it sent is echoed, then the stream ends OK.
            Poll::Ready(None) => {
                self.stop_reading(None);
                None
            }
        }
    }
}

impl Drop for ChatStream {
    /// The client went away, or the server dropped the stream: the session closes.
    fn drop(&mut self) {
        if self.ended || !self.session.is_open() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            runtime.spawn(
                async move {
                    let _ = session.close().await;
                }
                .instrument(self.span.clone()),
            );
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
    use super::*;

    /// The echo is the article's: the prefix, then the content; bytes that are not UTF-8
    /// are shown, not refused.
    #[test]
    fn echo_is_prefix_and_content() {
        assert_eq!(echo_of(b"hello"), "echo: hello");
        assert_eq!(echo_of(b""), "echo: ");
        assert_eq!(echo_of(&[0x66, 0xff]), "echo: f\u{fffd}");
    }
}
