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
//! - **Subscribing**: a [`ClientSubscription`] is a `Stream` of [`Event`]s; dropping it
//!   unsubscribes.
//! - **Flow control** ([`Credit`]): unlimited, a window the SDK replenishes as the
//!   application consumes deliveries, or manual grants with [`Client::grant`].
//! - **Reconnect**: when the stream fails, the client reconnects with exponential
//!   backoff and resubscribes every live subscription with its options. Live delivery
//!   is at-most-once: what is published while no connection exists is not replayed
//!   (per-topic sequence numbers show the jump). Acked publishes in flight at the loss
//!   fail with [`ClientError::Disconnected`] and can be retried.
//!
//! # Invariants
//!
//! - One driver task per client owns the connection attempts; one reader task per
//!   connection routes server frames to the pending request, ack, or subscription.
//! - Every pending request is answered exactly once: by its reply frame, or with
//!   `Disconnected` when its connection is lost.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use streambus_types::{CloseReason, ErrorCode, Event, Message, SubscriptionOptions, Topic, TopicError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::convert;
use crate::proto::streambus::v1 as pb;
use pb::bus_client::BusClient;
use pb::client_frame::Frame as Out;
use pb::server_frame::Frame as In;

/// Frames queued to the server per connection before publishers wait.
const REQUEST_QUEUE_FRAMES: usize = 1024;
/// HTTP/2 receive window per stream: the server's frames are up to about 1 MiB.
const CLIENT_STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Bytes of a publish frame kept for its own fields when the SDK splits batches.
const FRAME_SLACK_BYTES: u64 = 4096;
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
    /// Whether to reconnect at all after the stream is lost.
    pub reconnect: bool,
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
            reconnect: true,
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

/// A request waiting for its reply frame.
enum Pending {
    Subscribe {
        local: u64,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Unsubscribe(oneshot::Sender<Result<(), ClientError>>),
    Publish(oneshot::Sender<Result<u64, ClientError>>),
    Ping(oneshot::Sender<()>),
}

/// A subscription as the client remembers it, to resubscribe after a reconnect.
struct LiveSubscription {
    request: pb::Subscribe,
    /// Sends event batches to the [`ClientSubscription`]; bounded.
    events: mpsc::Sender<Vec<Event>>,
    /// The server's id on the current connection, once subscribed.
    server_id: Option<u64>,
}

#[derive(Default)]
struct State {
    /// By request id (subscribe, unsubscribe, ping) or publish id.
    pending: HashMap<u64, Pending>,
    /// By the client's own subscription id, stable across reconnects.
    subscriptions: HashMap<u64, LiveSubscription>,
    /// Server subscription id → client subscription id, for the current connection.
    by_server_id: HashMap<u64, u64>,
    welcome: Option<Welcome>,
}

struct Shared {
    options: ClientOptions,
    next_id: AtomicU64,
    state: Mutex<State>,
    /// The current connection's request queue; `None` while (re)connecting. Publishers
    /// wait on it; the driver replaces it.
    frames: watch::Sender<Option<mpsc::Sender<pb::ClientFrame>>>,
    closed: AtomicBool,
    /// Deliveries taken by the application since the last window grant.
    consumed: AtomicU64,
    refused: AtomicU64,
    reconnects: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the request queue ends the request stream (CloseSend).
        self.frames.send_replace(None);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a frame on the current connection, waiting for one if reconnecting.
    async fn send(&self, frame: Out) -> Result<(), ClientError> {
        let mut frames = self.frames.subscribe();
        let mut frame = pb::ClientFrame { frame: Some(frame) };
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            let current = {
                let guard = frames
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| ClientError::Closed)?;
                guard.clone()
            };
            let Some(tx) = current else { continue };
            match tx.send(frame).await {
                Ok(()) => return Ok(()),
                // That connection died meanwhile; wait for the next one.
                Err(mpsc::error::SendError(f)) => {
                    frame = f;
                    let _ = frames.changed().await;
                }
            }
        }
    }

    /// Sends a request and waits for its reply.
    async fn request<T>(
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
    fn consumed(self: &Arc<Self>, n: u64) {
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
}

/// A connection to a streambus server. Clones share it; dropping the last clone closes
/// the session as [`Client::close`] does.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// Closes the session when the last clone is dropped.
    _last: Arc<CloseOnDrop>,
}

/// Held by every [`Client`] clone (not by subscriptions or internal tasks).
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
        let (frames, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            options,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            frames,
            closed: AtomicBool::new(false),
            consumed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        let channel = Endpoint::from_shared(shared.options.url.clone())
            .map_err(ClientError::Connect)?
            .tcp_nodelay(true)
            // Room for whole delivery frames in flight (see the server's windows).
            .initial_stream_window_size(CLIENT_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CLIENT_STREAM_WINDOW_BYTES * 4)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .connect_lazy();
        let first = connect_once(&shared, channel.clone()).await?;
        tokio::spawn(drive(shared.clone(), channel, first));
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
        let limits = self.welcome();
        let (max_message, max_frame, max_batch) = limits.as_ref().map_or((u64::MAX, u64::MAX, u64::MAX), |w| {
            (w.max_message_bytes, w.max_frame_bytes, w.max_batch_messages.max(1))
        });
        if let Some(m) = messages.iter().find(|m| m.byte_len() as u64 > max_message) {
            return Err(ClientError::Refused {
                code: ErrorCode::InvalidArgument,
                message: format!(
                    "message of {} bytes exceeds the server's limit of {max_message} bytes",
                    m.byte_len()
                ),
            });
        }
        // Leave room for the frame's own fields beside the messages' bytes.
        let frame_budget = max_frame.saturating_sub(FRAME_SLACK_BYTES).max(1);
        let mut frames: Vec<Vec<pb::PublishMessage>> = vec![Vec::new()];
        let mut bytes = 0u64;
        for m in &messages {
            let cost = (m.byte_len() + m.topic.as_str().len() + 16) as u64;
            let current = frames.last_mut().expect("never empty");
            if !current.is_empty() && (current.len() as u64 >= max_batch || bytes + cost > frame_budget) {
                frames.push(Vec::new());
                bytes = 0;
            }
            bytes += cost;
            frames
                .last_mut()
                .expect("never empty")
                .push(convert::publish_message(m));
        }
        if !acked {
            for messages in frames {
                let batch = pb::PublishBatch {
                    publish_id: None,
                    messages,
                    durable: false,
                };
                self.shared.send(Out::Publish(batch)).await?;
            }
            return Ok(messages.len() as u64);
        }
        let mut acks = Vec::with_capacity(frames.len());
        for messages in frames {
            let id = self.shared.next_id();
            let (tx, rx) = oneshot::channel();
            self.shared.state().pending.insert(id, Pending::Publish(tx));
            let batch = pb::PublishBatch {
                publish_id: Some(id),
                messages,
                durable,
            };
            if let Err(e) = self.shared.send(Out::Publish(batch)).await {
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
        Ok(ClientSubscription {
            local,
            shared: self.shared.clone(),
            events: rx,
            current: VecDeque::new(),
            done: false,
        })
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

/// A subscription through a [`Client`]: a `Stream` of events. Dropping it unsubscribes.
pub struct ClientSubscription {
    local: u64,
    shared: Arc<Shared>,
    events: mpsc::Receiver<Vec<Event>>,
    current: VecDeque<Event>,
    done: bool,
}

impl std::fmt::Debug for ClientSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSubscription").field("id", &self.local).finish()
    }
}

impl ClientSubscription {
    /// Unsubscribes and waits for the server's confirmation.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.done = true;
        let entry = self.shared.state().subscriptions.remove(&self.local);
        let Some(server_id) = entry.and_then(|e| e.server_id) else {
            return Ok(());
        };
        self.shared.state().by_server_id.remove(&server_id);
        let id = self.shared.next_id();
        let frame = Out::Unsubscribe(pb::Unsubscribe {
            request_id: id,
            subscription_id: server_id,
        });
        self.shared.request(id, Pending::Unsubscribe, frame).await?
    }

    /// The next batch of events as the server sent them (one frame's worth).
    pub async fn next_batch(&mut self) -> Option<Vec<Event>> {
        if !self.current.is_empty() {
            let batch: Vec<Event> = self.current.drain(..).collect();
            self.shared.consumed(count_deliveries(&batch));
            return Some(batch);
        }
        let batch = self.events.recv().await?;
        self.shared.consumed(count_deliveries(&batch));
        Some(batch)
    }
}

fn count_deliveries(events: &[Event]) -> u64 {
    events.iter().filter(|e| matches!(e, Event::Delivery(_))).count() as u64
}

impl Stream for ClientSubscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.current.pop_front() {
                if matches!(event, Event::Delivery(_)) {
                    this.shared.consumed(1);
                }
                return Poll::Ready(Some(event));
            }
            match this.events.poll_recv(cx) {
                Poll::Ready(Some(batch)) => this.current.extend(batch),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for ClientSubscription {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.shared.state();
        let Some(server_id) = state.subscriptions.remove(&self.local).and_then(|e| e.server_id) else {
            return;
        };
        state.by_server_id.remove(&server_id);
        drop(state);
        let shared = self.shared.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let frame = Out::Unsubscribe(pb::Unsubscribe {
                    request_id: 0,
                    subscription_id: server_id,
                });
                let _ = shared.send(frame).await;
            });
        }
    }
}

// ------------------------------------------------------------------ connection

/// An established connection: its response stream, ready to be read.
struct Connected {
    responses: tonic::Streaming<pb::ServerFrame>,
}

/// Opens the stream, says hello, waits for welcome, resubscribes, and publishes the
/// request queue for senders.
async fn connect_once(shared: &Arc<Shared>, channel: Channel) -> Result<Connected, ClientError> {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE_FRAMES);
    let initial_credit = match shared.options.credit {
        Credit::Unlimited => None,
        Credit::Window(n) | Credit::Manual(n) => Some(n),
    };
    let hello = pb::ClientFrame {
        frame: Some(Out::Hello(pb::Hello {
            client_name: shared.options.name.clone(),
            initial_credit,
        })),
    };
    tx.send(hello).await.map_err(|_| ClientError::Closed)?;
    let mut client = BusClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut responses = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let welcome = match responses.message().await? {
        Some(pb::ServerFrame {
            frame: Some(In::Welcome(w)),
        }) => w,
        other => return Err(ClientError::Protocol(format!("expected welcome, got {other:?}"))),
    };
    let limits = welcome.limits.unwrap_or_default();
    shared.consumed.store(0, Ordering::Release);
    let resubscribe: Vec<(u64, pb::Subscribe)> = {
        let mut state = shared.state();
        state.welcome = Some(Welcome {
            session_id: welcome.session_id,
            max_message_bytes: limits.max_message_bytes,
            max_frame_bytes: limits.max_frame_bytes,
            max_batch_messages: limits.max_batch_messages,
            max_subscriptions_per_session: limits.max_subscriptions_per_session,
        });
        state.by_server_id.clear();
        let subs: Vec<_> = state
            .subscriptions
            .iter_mut()
            .map(|(local, s)| {
                s.server_id = None;
                (*local, s.request.clone())
            })
            .collect();
        subs.into_iter()
            .map(|(local, request)| {
                let id = shared.next_id();
                let (reply, _) = oneshot::channel();
                state.pending.insert(id, Pending::Subscribe { local, reply });
                (id, request)
            })
            .collect()
    };
    for (id, request) in resubscribe {
        let frame = pb::ClientFrame {
            frame: Some(Out::Subscribe(pb::Subscribe {
                request_id: id,
                ..request
            })),
        };
        tx.send(frame).await.map_err(|_| ClientError::Disconnected)?;
    }
    if shared.closed.load(Ordering::Acquire) {
        return Err(ClientError::Closed);
    }
    shared.frames.send_replace(Some(tx));
    Ok(Connected { responses })
}

/// The driver: reads each connection until it ends, then reconnects with backoff.
async fn drive(shared: Arc<Shared>, channel: Channel, first: Connected) {
    let mut connection = Some(first);
    let mut delay = shared.options.reconnect_initial;
    loop {
        if let Some(c) = connection.take() {
            delay = shared.options.reconnect_initial;
            let pinger = tokio::spawn(ping(shared.clone()));
            let ended = read(&shared, c.responses).await;
            pinger.abort();
            shared.frames.send_replace(None);
            fail_pending(&shared);
            if shared.closed.load(Ordering::Acquire) || !shared.options.reconnect {
                close_subscriptions(&shared, CloseReason::SessionClosed);
                return;
            }
            tracing::warn!(error = %ended, url = %shared.options.url, "connection lost; reconnecting");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(shared.options.reconnect_max);
        match connect_once(&shared, channel.clone()).await {
            Ok(c) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(url = %shared.options.url, "reconnected");
                connection = Some(c);
            }
            Err(ClientError::Closed) => {
                close_subscriptions(&shared, CloseReason::SessionClosed);
                return;
            }
            Err(e) => tracing::debug!(error = %e, "reconnect failed"),
        }
    }
}

async fn ping(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(shared.options.ping_interval);
    interval.tick().await;
    loop {
        interval.tick().await;
        let nonce = shared.next_id();
        if shared.send(Out::Ping(pb::Ping { nonce })).await.is_err() {
            return;
        }
    }
}

/// Answers every pending request with `Disconnected`.
fn fail_pending(shared: &Shared) {
    let pending: Vec<Pending> = shared.state().pending.drain().map(|(_, p)| p).collect();
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

/// Ends every subscription stream with `reason`.
fn close_subscriptions(shared: &Shared, reason: CloseReason) {
    let subscriptions: Vec<LiveSubscription> = shared.state().subscriptions.drain().map(|(_, s)| s).collect();
    for s in subscriptions {
        let _ = s.events.try_send(vec![Event::Closed(reason)]);
    }
}

/// Reads one connection's server frames until it ends; returns why it ended.
async fn read(shared: &Arc<Shared>, mut responses: tonic::Streaming<pb::ServerFrame>) -> ClientError {
    loop {
        let frame = match responses.message().await {
            Ok(Some(pb::ServerFrame { frame: Some(frame) })) => frame,
            Ok(Some(_)) => continue,
            Ok(None) => return ClientError::Closed,
            Err(status) => return ClientError::Status(status),
        };
        if let Err(e) = route(shared, frame).await {
            return e;
        }
    }
}

fn refused(code: i32, message: String) -> ClientError {
    let code = pb::ErrorCode::try_from(code)
        .ok()
        .and_then(convert::domain_code)
        .unwrap_or(ErrorCode::Internal);
    ClientError::Refused { code, message }
}

/// Routes one server frame.
async fn route(shared: &Arc<Shared>, frame: In) -> Result<(), ClientError> {
    let (events, server_id) = match frame {
        In::Welcome(_) => return Err(ClientError::Protocol("welcome sent twice".into())),
        In::Subscribed(s) => {
            let orphan = {
                let mut state = shared.state();
                match state.pending.remove(&s.request_id) {
                    Some(Pending::Subscribe { local, reply }) => match state.subscriptions.get_mut(&local) {
                        Some(live) => {
                            live.server_id = Some(s.subscription_id);
                            state.by_server_id.insert(s.subscription_id, local);
                            let _ = reply.send(Ok(()));
                            false
                        }
                        // Dropped while subscribing: undo on the server.
                        None => true,
                    },
                    _ => false,
                }
            };
            if orphan {
                let frame = Out::Unsubscribe(pb::Unsubscribe {
                    request_id: 0,
                    subscription_id: s.subscription_id,
                });
                let shared = shared.clone();
                tokio::spawn(async move { shared.send(frame).await });
            }
            return Ok(());
        }
        In::Unsubscribed(u) => {
            if let Some(Pending::Unsubscribe(reply)) = shared.state().pending.remove(&u.request_id) {
                let _ = reply.send(Ok(()));
            }
            return Ok(());
        }
        In::PublishAck(ack) => {
            if let Some(Pending::Publish(reply)) = shared.state().pending.remove(&ack.publish_id) {
                let _ = reply.send(Ok(ack.accepted));
            }
            return Ok(());
        }
        In::PublishRefused(r) => {
            if let Some(Pending::Publish(reply)) = shared.state().pending.remove(&r.publish_id) {
                let _ = reply.send(Err(refused(r.code, r.message)));
            }
            return Ok(());
        }
        In::Error(e) => {
            let pending = shared.state().pending.remove(&e.request_id);
            match pending {
                Some(Pending::Subscribe { local, reply }) => {
                    shared.state().subscriptions.remove(&local);
                    let _ = reply.send(Err(refused(e.code, e.message)));
                }
                Some(Pending::Unsubscribe(reply)) => {
                    let _ = reply.send(Err(refused(e.code, e.message)));
                }
                Some(Pending::Publish(reply)) => {
                    let _ = reply.send(Err(refused(e.code, e.message)));
                }
                Some(Pending::Ping(_)) | None => {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(request = e.request_id, error = %e.message, "server refused a frame");
                }
            }
            return Ok(());
        }
        In::Pong(p) => {
            if let Some(Pending::Ping(reply)) = shared.state().pending.remove(&p.nonce) {
                let _ = reply.send(());
            }
            return Ok(());
        }
        In::Deliveries(batch) => {
            let id = batch.subscription_id;
            let deliveries = convert::deliveries_from_wire(batch).map_err(|e| ClientError::Protocol(e.to_string()))?;
            (deliveries.into_iter().map(Event::Delivery).collect::<Vec<_>>(), id)
        }
        In::Gap(g) => {
            let id = g.subscription_id;
            let gap = convert::gap_from_wire(g).map_err(|e| ClientError::Protocol(e.to_string()))?;
            (vec![Event::Gap(gap)], id)
        }
        In::SubscriptionClosed(c) => {
            let reason = convert::close_reason_from_wire(c.reason);
            let live = {
                let mut state = shared.state();
                let local = state.by_server_id.remove(&c.subscription_id);
                local.and_then(|l| state.subscriptions.remove(&l))
            };
            if let Some(live) = live {
                let _ = live.events.send(vec![Event::Closed(reason)]).await;
            }
            return Ok(());
        }
    };
    let sender = {
        let state = shared.state();
        state
            .by_server_id
            .get(&server_id)
            .and_then(|local| state.subscriptions.get(local))
            .map(|s| s.events.clone())
    };
    if let Some(sender) = sender {
        // Waiting here is the client's backpressure: the server sees it through HTTP/2.
        let _ = sender.send(events).await;
    }
    Ok(())
}
