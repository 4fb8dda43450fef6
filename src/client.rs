//! The client SDK: a [`Client`] holds one `Connect` stream (its session) to a streambus
//! server and survives its loss.
//!
//! ```no_run
//! # async fn demo() -> Result<(), streambus::client::ClientError> {
//! use futures::StreamExt;
//! use streambus::SubscriptionOptions;
//! use streambus::client::Client;
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let mut temps = client.subscribe("sensors.*.temperature", SubscriptionOptions::default()).await?;
//! client.publish("sensors.dev1.temperature", "21.5").await?; // fire-and-forget
//! client.publish_acked("sensors.dev2.temperature", "19.0").await?; // waits for the ack
//! while let Some(event) = temps.next().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! - **Publishing**: [`Client::publish`] queues and returns (a refusal is logged and
//!   counted in [`Client::refused`]); [`Client::publish_acked`] and
//!   [`Client::publish_batch`] with `acked` wait for the server's ack or refusal.
//!   Publishes wait while the connection is being re-established or the stream is full
//!   (backpressure).
//! - **Subscribing**: a [`ClientSubscription`] is a `Stream` of [`crate::Event`]s; dropping it
//!   unsubscribes.
//! - **Flow control** ([`Credit`]): unlimited, a window the SDK replenishes as the
//!   application consumes deliveries, or manual grants with [`Client::grant`].
//! - **Reconnect**: when the stream fails, the client reconnects with exponential
//!   backoff and resubscribes every live subscription with its options. Live delivery
//!   is at-most-once: what is published while no connection exists is not replayed
//!   (per-topic sequence numbers show the jump). Acked publishes in flight at the loss
//!   fail with [`ClientError::Disconnected`] and can be retried.
//!
//! # Layout
//!
//! - this module: the public API ([`Client`], [`ClientOptions`], [`ClientError`]);
//! - `shared`: what the client's clones, subscriptions and tasks share (the current
//!   request queue, pending requests, live subscriptions);
//! - `call`: the `Connect` call on the client's own HTTP/2 connection (connect, TLS,
//!   gRPC framing);
//! - `connection`: the connection and reconnect loop (hello, welcome, resubscribe,
//!   backoff, pings);
//! - `router`: each server frame to what it answers, one function per frame kind;
//! - `subscription`: [`ClientSubscription`];
//! - `publish`: cutting a batch into frames within the server's limits, and encoding
//!   each straight into its wire bytes.
//!
//! # Invariants
//!
//! - One driver task per client owns the connection attempts and runs each connection:
//!   its socket, the writer of queued frames, and the ping; one reader task per
//!   connection routes server frames to the pending request, ack, or subscription.
//! - Every pending request is answered exactly once: by its reply frame, or with
//!   `Disconnected` when its connection is lost.

mod call;
mod connection;
mod publish;
mod router;
mod security;
mod shared;
mod subscription;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use streambus_types::{ErrorCode, Message, SubscriptionOptions, Topic, TopicError};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Endpoint;

use crate::convert;
use crate::proto::streambus::v1 as pb;
use pb::client_frame::Frame as Out;
pub use security::{ClientAuth, ClientTls};
use shared::{LiveSubscription, Pending, Shared};
pub use subscription::ClientSubscription;

/// Frames queued to the server per connection before publishers wait.
const REQUEST_QUEUE_FRAMES: usize = 1024;
/// Bytes of frames queued to the server per connection before publishers wait (a frame
/// larger than this goes alone once the queue is empty): a few whole frames of the
/// server's size, so large batches still pipeline.
const REQUEST_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// HTTP/2 receive window per stream: the server's frames are up to about 1 MiB.
const CLIENT_STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Event batches buffered per subscription before the connection's reader waits (and
/// with it, through HTTP/2 flow control, the server).
const SUBSCRIPTION_QUEUE_BATCHES: usize = 64;

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server ended the call with a status.
    #[error("server status {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The server refused the request (in-band error or publish refusal).
    #[error("refused ({}): {message}", code.as_str())]
    Refused {
        /// The error category.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// A topic or filter is invalid (checked before sending).
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// The connection was lost before the answer came; the request may be retried.
    #[error("connection lost before the server answered")]
    Disconnected,
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A server URL the client cannot use.
    #[error("invalid server URL {url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection to the server failed or broke (TCP, TLS or HTTP/2).
    #[error("transport: {0}")]
    Transport(String),
    /// The server did not answer in time ([`ClientOptions::ping_timeout`]): no
    /// `welcome` to a connect, or no frame at all after a ping.
    #[error("the server did not answer within {0:?}")]
    Unresponsive(Duration),
}

/// Delivery flow control of a client's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Credit {
    /// No flow control: the server sends as fast as the stream takes.
    #[default]
    Unlimited,
    /// At most this many deliveries outstanding; the SDK grants more as the application
    /// takes deliveries out of its subscriptions.
    Window(u64),
    /// Start with this many credits; the application grants more with [`Client::grant`].
    Manual(u64),
}

/// How a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Server URL, e.g. `http://127.0.0.1:50051`.
    pub url: String,
    /// Client name, shown in the server's snapshots and logs.
    pub name: String,
    /// Delivery flow control.
    pub credit: Credit,
    /// First reconnect delay; doubled after each failed attempt.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// How often the client pings (keeps the server's idle timeout away).
    pub ping_interval: Duration,
    /// How long the client waits, after a ping, for any frame from the server before it
    /// takes the connection for dead (a server gone or black-holed) and reconnects; also
    /// how long a connect waits for the server's `welcome`. A connection whose reader is
    /// held back by a full subscription is not judged: the answer may be behind it.
    pub ping_timeout: Duration,
    /// Whether to reconnect at all after the stream is lost.
    pub reconnect: bool,
    /// Credentials, sent as `authorization` metadata on every connection.
    pub auth: ClientAuth,
    /// TLS (an `https://` URL): the server's CA and an optional client certificate.
    pub tls: Option<ClientTls>,
    /// More servers of the same bus: the first connect goes to `url`, then to these in
    /// turn if it fails; after a lost connection, reconnecting starts with the next
    /// server in the list (the one just lost is tried last).
    pub fallback_urls: Vec<String>,
}

impl ClientOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            name: "streambus-client".into(),
            credit: Credit::Unlimited,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(20),
            reconnect: true,
            auth: ClientAuth::None,
            tls: None,
            fallback_urls: Vec::new(),
        }
    }

    /// Adds a server to fail over to (see [`ClientOptions::fallback_urls`]).
    pub fn fallback(mut self, url: impl Into<String>) -> Self {
        self.fallback_urls.push(url.into());
        self
    }

    /// Every server URL, `url` first.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.url.as_str()).chain(self.fallback_urls.iter().map(String::as_str))
    }

    /// Authenticates with a bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = ClientAuth::Token(token.into());
        self
    }

    /// Authenticates with a user name and password.
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = ClientAuth::Basic {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Connects over TLS (the URL must be `https://`).
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The endpoint these options describe (TLS applied), for a client of the bus's
    /// other services (the article's chat) that should connect the same way.
    pub fn endpoint(&self) -> Result<Endpoint, ClientError> {
        self.endpoint_for(&self.url)
    }

    /// The endpoint of one of the URLs, TLS applied.
    fn endpoint_for(&self, url: &str) -> Result<Endpoint, ClientError> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(ClientError::Connect)?;
        match &self.tls {
            Some(tls) => tls.apply(endpoint).map_err(ClientError::Connect),
            None => Ok(endpoint),
        }
    }

    /// Sets the client name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets flow control.
    pub fn credit(mut self, credit: Credit) -> Self {
        self.credit = credit;
        self
    }

    /// Turns reconnecting on or off.
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }
}

/// The server's limits and the session id, from its `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The session's id on the server (changes on reconnect).
    pub session_id: u64,
    /// Largest message, payload plus headers.
    pub max_message_bytes: u64,
    /// Largest frame the server decodes.
    pub max_frame_bytes: u64,
    /// Most messages per publish batch.
    pub max_batch_messages: u64,
    /// Most subscriptions per session.
    pub max_subscriptions_per_session: u64,
}

impl Welcome {
    /// The client's view of a `welcome` frame.
    fn from_wire(welcome: &pb::Welcome) -> Self {
        let limits = welcome.limits.unwrap_or_default();
        Welcome {
            session_id: welcome.session_id,
            max_message_bytes: limits.max_message_bytes,
            max_frame_bytes: limits.max_frame_bytes,
            max_batch_messages: limits.max_batch_messages,
            max_subscriptions_per_session: limits.max_subscriptions_per_session,
        }
    }
}

/// A connection to a streambus server. Clones share it; dropping the last clone closes
/// the session as [`Client::close`] does.
#[derive(Clone)]
pub struct Client {
    /// Shared with the driver task, the reader, and every subscription.
    shared: Arc<Shared>,
    /// Closes the session when the last clone is dropped.
    _last: Arc<CloseOnDrop>,
}

/// Held by every [`Client`] clone (not by subscriptions or internal tasks), so that the
/// session ends when the application lets go of the last clone, even though the
/// client's own tasks still hold the shared state.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.shared.options.url).finish()
    }
}

impl Client {
    /// Connects to `url` with default options.
    pub async fn connect(url: impl Into<String>) -> Result<Client, ClientError> {
        Client::connect_with(ClientOptions::new(url)).await
    }

    /// Connects; fails if the first connection cannot be made.
    pub async fn connect_with(options: ClientOptions) -> Result<Client, ClientError> {
        let shared = Shared::new(options);
        let servers = shared
            .options
            .urls()
            .map(|url| call::Endpoint::new(url, &shared.options))
            .collect::<Result<Vec<_>, _>>()?;
        // The first server that answers; the error of the last one otherwise.
        let mut first = Err(ClientError::Disconnected);
        let mut current = 0;
        for (i, endpoint) in servers.iter().enumerate() {
            first = connection::connect_once(&shared, endpoint).await;
            match &first {
                Ok(_) => {
                    current = i;
                    break;
                }
                Err(ClientError::Closed) => break,
                Err(e) => tracing::debug!(url = %endpoint.url, error = %e, "server did not answer; trying the next"),
            }
        }
        let first = first?;
        tokio::spawn(connection::drive(shared.clone(), servers, current, first));
        Ok(Client {
            _last: Arc::new(CloseOnDrop(shared.clone())),
            shared,
        })
    }

    /// The server's `welcome` on the current connection.
    pub fn welcome(&self) -> Option<Welcome> {
        self.shared.state().welcome.clone()
    }

    /// How many times the client reconnected.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Fire-and-forget publishes the server refused (each is also logged).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Publishes without waiting for an ack.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let message = Message::new(Topic::new(topic)?, payload);
        self.publish_batch(vec![message], false).await.map(|_| ())
    }

    /// Publishes and waits until the server admitted the message.
    pub async fn publish_acked(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let message = Message::new(Topic::new(topic)?, payload);
        self.publish_batch(vec![message], true).await.map(|_| ())
    }

    /// Publishes a batch; with `acked`, waits for the acks and returns the number of
    /// messages admitted.
    ///
    /// Messages larger than the server's `max_message_bytes` are refused here, before
    /// anything is sent. A batch over the server's batch or frame limits is sent as
    /// several frames (order is kept); each frame is admitted or refused whole.
    pub async fn publish_batch(&self, messages: Vec<Message>, acked: bool) -> Result<u64, ClientError> {
        self.send_batch(messages, acked, false).await
    }

    /// Publishes a batch and waits for its durable ack: every durable sink (a sink with
    /// a disk buffer) whose filter matches a message has it on disk, so it survives a
    /// crash of the sink and of the server. Returns the number of messages.
    ///
    /// A refusal with [`ErrorCode::Unavailable`] means a durable sink could not take a
    /// message (buffer full, disk error); live subscribers got it anyway. Batches over
    /// the server's limits are split as in [`Client::publish_batch`].
    pub async fn publish_durable(&self, messages: Vec<Message>) -> Result<u64, ClientError> {
        self.send_batch(messages, true, true).await
    }

    async fn send_batch(&self, messages: Vec<Message>, acked: bool, durable: bool) -> Result<u64, ClientError> {
        let count = messages.len() as u64;
        let mut frames = publish::frames(messages, self.welcome().as_ref())?;
        if !acked {
            while let Some(range) = frames.next() {
                self.shared.send_encoded(frames.encode(range, None, false)).await?;
            }
            return Ok(count);
        }
        // Every frame is sent before any ack is awaited, so the frames pipeline.
        let mut acks = Vec::new();
        while let Some(range) = frames.next() {
            let id = self.shared.next_id();
            let (tx, rx) = oneshot::channel();
            self.shared.state().pending.insert(id, Pending::Publish(tx));
            if let Err(e) = self.shared.send_encoded(frames.encode(range, Some(id), durable)).await {
                self.shared.state().pending.remove(&id);
                return Err(e);
            }
            acks.push(rx);
        }
        let mut accepted = 0;
        for ack in acks {
            accepted += ack.await.map_err(|_| ClientError::Disconnected)??;
        }
        Ok(accepted)
    }

    /// Subscribes to `filter`.
    pub async fn subscribe(
        &self,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<ClientSubscription, ClientError> {
        streambus_types::TopicFilter::new(filter)?;
        let local = self.shared.next_id();
        let request = pb::Subscribe {
            request_id: 0,
            filter: filter.to_owned(),
            queue_group: options.queue_group.clone().unwrap_or_default(),
            overflow: convert::overflow_to_wire(options.overflow) as i32,
            buffer_messages: options.buffer_messages.unwrap_or(0) as u64,
            buffer_bytes: options.buffer_bytes.unwrap_or(0) as u64,
        };
        let (events, rx) = mpsc::channel(SUBSCRIPTION_QUEUE_BATCHES);
        self.shared.state().subscriptions.insert(
            local,
            LiveSubscription {
                request: request.clone(),
                events,
                server_id: None,
            },
        );
        let id = self.shared.next_id();
        let frame = Out::Subscribe(pb::Subscribe {
            request_id: id,
            ..request
        });
        let result = self
            .shared
            .request(id, |reply| Pending::Subscribe { local, reply }, frame)
            .await
            .and_then(|r| r);
        if let Err(e) = result {
            self.shared.state().subscriptions.remove(&local);
            return Err(e);
        }
        Ok(ClientSubscription::new(local, self.shared.clone(), rx))
    }

    /// Grants `credits` more deliveries (with [`Credit::Manual`]).
    pub async fn grant(&self, credits: u64) -> Result<(), ClientError> {
        self.shared.send(Out::Credit(pb::CreditGrant { credits })).await
    }

    /// Round trip to the server through the session's stream.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = tokio::time::Instant::now();
        let id = self.shared.next_id();
        self.shared
            .request(id, Pending::Ping, Out::Ping(pb::Ping { nonce: id }))
            .await?;
        Ok(started.elapsed())
    }

    /// Ends the session gracefully: the server still delivers what it buffered, then the
    /// subscriptions end.
    pub fn close(&self) {
        self.shared.close();
    }
}
