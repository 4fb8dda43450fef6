//! `stream.ChatService/BidirectionalChat`: the original article's echo service, served
//! through the bus's actors rather than beside them.
//!
//! Each chat stream is a `Session` actor. It subscribes (policy `block`, so nothing is
//! ever dropped) to its own system topic `$chat.<session id>` and publishes every
//! incoming message there; each delivery is answered with content `"echo: " + content`
//! and timestamp = now in unix seconds, exactly as the article's Go server does. The
//! echoes therefore travel the bus's real hot path (session, topic actor, admission,
//! subscriber buffer), in order, with end-to-end backpressure: a client that stops
//! reading fills the buffer, which holds the topic, which holds the reader, which
//! stops reading the client.
//!
//! The client ending its stream (`CloseSend`) closes the session gracefully: every
//! message sent before it is still echoed, then the stream ends OK.

use std::time::{SystemTime, UNIX_EPOCH};

use streambus_core::{BatchEvent, ConnectOptions, SessionHandle, Subscription};
use streambus_types::{Message, OverflowPolicy, SubscriptionOptions, Topic};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::Context;
use crate::convert;
use crate::proto::stream as chat;

/// Buffered echoes per chat stream (messages) before the topic, and so the reader, waits.
const CHAT_BUFFER_MESSAGES: usize = 1024;

/// The echo service.
#[derive(Clone)]
pub struct ChatService {
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

/// A response stream of chat messages.
type ChatStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<chat::Message, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl chat::chat_service_server::ChatService for ChatService {
    type BidirectionalChatStream = ChatStream;

    async fn bidirectional_chat(
        &self,
        request: Request<Streaming<chat::Message>>,
    ) -> Result<Response<ChatStream>, Status> {
        let context = self.context.clone();
        let session = context
            .bus
            .connect(ConnectOptions::named("chat"))
            .await
            .map_err(|e| convert::status(&e))?;
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
        let (out, rx) = mpsc::channel(context.grpc.outbound_frames);
        let span = tracing::info_span!("chat", session = session.id().0);
        tokio::spawn(echo(echoes, out.clone()).instrument(span.clone()));
        tokio::spawn(read(context, session, topic, request.into_inner(), out).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Publishes every chat message on the session's topic; closes the session when the
/// client is done, gone or the server stops.
async fn read(
    context: Context,
    session: SessionHandle,
    topic: Topic,
    mut inbound: Streaming<chat::Message>,
    out: mpsc::Sender<Result<chat::Message, Status>>,
) {
    let failure = loop {
        let message = tokio::select! {
            biased;
            () = context.stopping() => break Some(Status::unavailable("server shutting down")),
            () = out.closed() => break None,
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(message)) => {
                if let Err(e) = session
                    .publish_message(Message::new(topic.clone(), message.content))
                    .await
                {
                    break Some(convert::status(&e));
                }
            }
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    // Graceful: everything published is echoed before the stream ends.
    let _ = session.close().await;
    if let Some(status) = failure {
        let _ = tokio::time::timeout(context.drain_timeout(), out.send(Err(status))).await;
    }
}

/// Answers each message published on the session's topic.
async fn echo(mut echoes: Subscription, out: mpsc::Sender<Result<chat::Message, Status>>) {
    while let Some(event) = echoes.next_batch().await {
        match event {
            BatchEvent::Deliveries(run) => {
                for delivery in run.iter() {
                    let reply = chat::Message {
                        content: echo_of(&delivery.payload),
                        timestamp: unix_seconds(),
                    };
                    if out.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
            // Unreachable with the block policy; reported, never silent.
            BatchEvent::Gap(gap) => tracing::error!(dropped = gap.dropped, "chat echoes lost"),
            BatchEvent::Closed(_) => return,
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
