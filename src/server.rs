//! The gRPC server: the `streambus.v1.Bus` service, the article's
//! `stream.ChatService`, gRPC health and reflection (v1 and v1alpha), on one listener.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use streambus::{Bus, BusConfig, server};
//!
//! let bus = Bus::start(BusConfig::default()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! let running = server::start(bus, listener);
//! println!("serving on {}", running.local_addr());
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Each `Connect`, `Subscribe`, `PublishStream` and `BidirectionalChat` stream opens its
//! own `Session` actor under the bus's session manager ([`Bus::connect`]); unary
//! `Publish` calls share the bus's default session.
//!
//! # Shutdown
//!
//! One path, whatever triggers it (SIGINT/SIGTERM in the CLI, [`ServerHandle::shutdown`]
//! when embedded), in the phases of `shutdown.rs`: health turns `NOT_SERVING` and the
//! listener stops accepting; the bus drains ([`Bus::quiesce`]): no new session, publish
//! or subscription is taken (`UNAVAILABLE`), while every stream goes on delivering, until
//! everything admitted is in its subscribers' buffers; then every stream closes its
//! session, sends what its subscriptions hold (within its client's credits) and ends with
//! `UNAVAILABLE`. The whole drain is bounded by `shutdown.drain_timeout_ms` plus a grace
//! second; what is left undelivered then is counted, logged at ERROR per subscription,
//! and reported in the [`DrainReport`]. Then the bus itself shuts down (sinks drain).

mod bus_service;
mod chat;
mod connect;
mod outbound;
mod pump;
mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use streambus_core::{Bus, BusConfig, ConnectOptions};
use streambus_types::config::{GrpcConfig, LimitsConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::Server;

use crate::auth::{Authenticator, Credentials};
use tonic::transport::server::TcpIncoming;

use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::stream::chat_service_server::ChatServiceServer;
use crate::proto::streambus::v1::bus_server::BusServer;

pub use bus_service::{BusService, SUBSCRIPTION_ID_HEADER};
pub use chat::{ChatService, ChatStream};
pub use shutdown::DrainReport;
use shutdown::{Phase, Shutdown, Stopping};

/// Bytes a frame may carry beyond its largest message: topics, headers' framing,
/// protobuf tags. The decode limit is `limits.max_message_bytes` plus this, so a message
/// at the limit always fits in a frame and a larger one gets a typed in-band error.
pub const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;

/// The largest encoded frame the server decodes, advertised in `welcome`.
pub fn max_frame_bytes(limits: &LimitsConfig) -> usize {
    limits.max_message_bytes.saturating_add(FRAME_OVERHEAD_BYTES)
}

/// The HTTP/2 settings [`serve`] uses, for any tonic server that should be compared
/// like for like with it (the bench's baseline server takes them, with [`tcp_incoming`],
/// under `--bus-transport`).
///
/// - Windows hold one whole frame per stream: with the 64 KiB default a 1 MiB publish
///   batch would take 16 WINDOW_UPDATE round trips. The window is also what a stream may
///   buffer while its reader is held back, so it stays one frame.
/// - HTTP/2 keepalive pings (`grpc.keepalive_interval_ms`, `grpc.keepalive_timeout_ms`)
///   find dead peers, whose sessions are then closed, when `grpc.http2_keepalive` is
///   on (off by default; see there).
pub fn http2_settings(server: Server, config: &BusConfig) -> Server {
    let keepalive = |ms: u64| config.grpc.http2_keepalive.then(|| Duration::from_millis(ms));
    let stream_window = u32::try_from(max_frame_bytes(&config.limits)).unwrap_or(u32::MAX);
    server
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(stream_window.saturating_mul(4))
        .http2_keepalive_interval(keepalive(config.grpc.keepalive_interval_ms))
        .http2_keepalive_timeout(keepalive(config.grpc.keepalive_timeout_ms))
}

/// Pending connections the listener queues before accepting them; the kernel caps it
/// at `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds the gRPC listener as `streambus serve` does: `SO_REUSEADDR` and a listen
/// backlog as deep as the kernel allows. With tokio's default (1024) a connect storm of
/// thousands of devices overflows the accept queue, and every connection beyond it
/// waits for its SYN to be retransmitted (1 s, then 3 s) before the server sees it.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The accepted sockets as [`serve`] sets them up: `TCP_NODELAY`, TCP keepalive
/// (`grpc.keepalive_interval_ms`) and, on Linux, `TCP_USER_TIMEOUT`
/// (`grpc.write_deadline_ms`). The builder's TCP options do not reach sockets from a
/// given listener, hence this. Without `TCP_NODELAY`, Nagle's algorithm holds small
/// frames (acks, window updates) back against the peer's delayed ACKs and caps a stream
/// near 17 MB/s. The user timeout makes the kernel drop a connection whose sent data
/// stays unacknowledged that long (a peer gone or black-holed), which ends all its
/// streams and frees what they held.
pub fn tcp_incoming(
    listener: TcpListener,
    config: &BusConfig,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    let user_timeout =
        (config.grpc.write_deadline_ms > 0).then(|| Duration::from_millis(config.grpc.write_deadline_ms));
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_millis(config.grpc.keepalive_interval_ms)));
    futures::StreamExt::map(incoming, move |accepted| {
        accepted.inspect(|stream| set_user_timeout(stream, user_timeout))
    })
}

/// Sets `TCP_USER_TIMEOUT` where the platform has it; a failure is logged, not fatal.
fn set_user_timeout(stream: &tokio::net::TcpStream, timeout: Option<Duration>) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(timeout) {
        tracing::warn!(error = %e, "cannot set TCP_USER_TIMEOUT on an accepted connection");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = (stream, timeout);
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener or HTTP/2 transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not load the descriptors (a build problem).
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server task panicked or was cancelled.
    #[error("server task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The authentication configuration could not be loaded (the JWT key).
    #[error("auth: {0}")]
    Auth(String),
}

/// What every stream handler shares.
#[derive(Clone)]
pub(crate) struct Context {
    /// The bus every stream opens its session on.
    pub(crate) bus: Bus,
    /// Listener settings: outbound queue bound, idle timeout, keepalive.
    pub(crate) grpc: GrpcConfig,
    /// The bus's limits, told to clients in `welcome` and used for frame sizes.
    pub(crate) limits: LimitsConfig,
    /// The shutdown phase, drain deadline and undelivered count every stream shares.
    pub(crate) shutdown: Shutdown,
    /// Checks credentials when `[auth]` is on; `None`: every client may do anything.
    pub(crate) auth: Option<Arc<Authenticator>>,
}

impl Context {
    /// Resolves when the server starts shutting down (`Draining`): stop taking new work.
    pub(crate) fn stopping(&self) -> Stopping {
        self.shutdown.reached(Phase::Draining)
    }

    /// Resolves when streams must close (`Closing`): everything admitted has reached the
    /// subscribers' buffers, or the drain ran out of time.
    pub(crate) fn closing(&self) -> Stopping {
        self.shutdown.reached(Phase::Closing)
    }

    /// A new stream's outbound queue, bounded and guarded as configured.
    pub(crate) fn outbound(&self) -> (outbound::Outbound, outbound::OutboundStream) {
        let deadline = (self.grpc.write_deadline_ms > 0).then(|| Duration::from_millis(self.grpc.write_deadline_ms));
        outbound::channel(self.grpc.outbound_frames, self.grpc.outbound_bytes, deadline)
    }

    /// How long a stream's own drain may take now.
    pub(crate) fn drain_timeout(&self) -> Duration {
        self.shutdown.budget()
    }

    /// The credentials of a request (metadata and client certificate).
    pub(crate) fn credentials<T>(&self, request: &tonic::Request<T>) -> Credentials {
        match &self.auth {
            Some(auth) => {
                let certs = request.peer_certs();
                Credentials::from_request(
                    request.metadata(),
                    certs.as_deref().map(Vec::as_slice),
                    auth.certificate_identity(),
                )
            }
            None => Credentials::default(),
        }
    }

    /// Session options for a client called `name` with `credentials`: with
    /// authentication on, its identity's rights, or `UNAUTHENTICATED`.
    pub(crate) async fn connect_options(
        &self,
        name: &str,
        credentials: &Credentials,
    ) -> Result<ConnectOptions, Status> {
        let options = ConnectOptions::named(name);
        let Some(auth) = &self.auth else {
            return Ok(options);
        };
        match auth.authenticate(credentials).await {
            Ok(access) => {
                tracing::debug!(identity = access.identity(), client = name, "authenticated");
                Ok(options.access(access))
            }
            Err(status) => {
                self.bus.note_refusal(streambus_core::ErrorCode::Unauthenticated);
                tracing::warn!(client = name, reason = status.message(), "authentication failed");
                Err(status)
            }
        }
    }
}

/// Serves `bus` on `listener` until `signal` resolves, then drains (see the module doc),
/// shuts the bus down and says how the drain went.
pub async fn serve(
    bus: Bus,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send,
) -> Result<DrainReport, ServeError> {
    let auth = match bus.config().auth.enabled {
        true => Some(Arc::new(
            Authenticator::new(bus.config().auth.clone()).map_err(ServeError::Auth)?,
        )),
        false => None,
    };
    serve_with_auth(bus, listener, signal, auth).await
}

/// [`serve`] with an authenticator made by the caller (required when `[auth]` is
/// enabled, ignored otherwise), so that one authenticator (its keys read once, its
/// remembered passwords shared) serves the gRPC API and whatever else the caller
/// guards with it, such as the admin plane.
pub async fn serve_with_auth(
    bus: Bus,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send,
    auth: Option<Arc<Authenticator>>,
) -> Result<DrainReport, ServeError> {
    let config = bus.config().clone();
    let (shutdown, phase) = Shutdown::new(Duration::from_millis(config.shutdown.drain_timeout_ms));
    let tls = match &config.grpc.tls {
        Some(tls) => Some(crate::tls::Reloader::new(tls.clone())?),
        None => None,
    };
    let context = Context {
        bus: bus.clone(),
        grpc: config.grpc.clone(),
        limits: config.limits.clone(),
        shutdown: shutdown.clone(),
        auth: match config.auth.enabled {
            true => {
                Some(auth.ok_or_else(|| ServeError::Auth("[auth] is enabled and no authenticator was given".into()))?)
            }
            false => None,
        },
    };
    let frame_limit = max_frame_bytes(&config.limits);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BusServer<BusService>>().await;
    health.set_serving::<ChatServiceServer<ChatService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let bus_service = BusServer::new(BusService::new(context.clone()))
        .max_decoding_message_size(frame_limit)
        .max_encoding_message_size(frame_limit);
    let chat_service = ChatServiceServer::new(ChatService::new(context.clone())).max_decoding_message_size(frame_limit);

    let local_addr = listener.local_addr().ok();
    tracing::info!(addr = ?local_addr, "grpc server listening");

    let (fired_tx, fired_rx) = oneshot::channel::<()>();
    // Borrowed by both futures below; streams read a closed channel as `Closing`, so it
    // must stay open until the server is done.
    let phase = &phase;
    let shutdown_signal = async {
        signal.await;
        shutdown.start_clock();
        tracing::info!("shutting down: no new streams, publishes or subscriptions; delivering what was admitted");
        health.set_not_serving::<BusServer<BusService>>().await;
        health.set_not_serving::<ChatServiceServer<ChatService>>().await;
        let _ = phase.send(Phase::Draining);
        let _ = fired_tx.send(());
    };
    let incoming = tcp_incoming(listener, &config);
    let router = http2_settings(Server::builder(), &config)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(bus_service)
        .add_service(chat_service);
    // Certificates are watched for as long as the server runs.
    let watcher = tls.as_ref().map(|t| AbortOnDrop(t.watch()));
    let served: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + '_>> = match &tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls.incoming(incoming), shutdown_signal)),
        None => Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown_signal)),
    };
    // Once the signal fired: the bus drains into subscriber buffers, then the streams
    // close and flush; the whole is bounded by the drain timeout and a grace second.
    let quiesced = OnceLock::new();
    let drain = async {
        if fired_rx.await.is_err() {
            return std::future::pending().await;
        }
        let _ = quiesced.set(bus.quiesce(context.drain_timeout()).await);
        let _ = phase.send(Phase::Closing);
        tokio::time::sleep(context.drain_timeout() + Duration::from_secs(1)).await;
    };
    let (result, streams_ended) = tokio::select! {
        result = served => (result.map_err(ServeError::from), true),
        () = drain => {
            tracing::warn!("drain timed out; closing the remaining streams");
            (Ok(()), false)
        }
    };
    // Every client left before the drain finished: nothing waits on the buffers now.
    let quiesced = match quiesced.into_inner() {
        Some(q) => q,
        None => bus.quiesce(context.drain_timeout()).await,
    };
    let undelivered = shutdown.undelivered();
    let report = DrainReport {
        complete: quiesced.complete && streams_ended && undelivered == 0,
        inflight_batches: quiesced.inflight_batches,
        undelivered,
    };
    drop(watcher);
    bus.shutdown().await;
    if report.complete {
        tracing::info!("grpc server stopped; everything admitted was delivered");
    } else {
        tracing::error!(
            undelivered = report.undelivered,
            inflight_batches = report.inflight_batches,
            "grpc server stopped; the drain did not complete and messages were left undelivered"
        );
    }
    result.map(|()| report)
}

/// Aborts a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server running in a background task (for embedding and tests).
#[derive(Debug)]
pub struct ServerHandle {
    /// Where the server listens.
    local_addr: SocketAddr,
    /// The bus it serves (shut down by the server task after the streams drain).
    bus: Bus,
    /// Fires the shutdown; dropping it does too.
    trigger: oneshot::Sender<()>,
    /// The server task: ends after the drain, with the serve error if any. Dropping the
    /// handle detaches it (the dropped trigger has already started its shutdown).
    task: JoinHandle<Result<DrainReport, ServeError>>,
}

/// Starts serving `bus` on an already bound `listener` (bind `127.0.0.1:0` to get a free
/// port, then read [`ServerHandle::local_addr`]).
///
/// # Panics
///
/// Panics if the listener has no local address, which a bound TCP listener always has.
pub fn start(bus: Bus, listener: TcpListener) -> ServerHandle {
    let local_addr = listener.local_addr().expect("a bound listener has an address");
    let (trigger, fired) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(bus.clone(), listener, async move {
        let _ = fired.await;
    }));
    ServerHandle {
        local_addr,
        bus,
        trigger,
        task,
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The bus being served.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Shuts down gracefully (see the module doc) and waits until it is done.
    pub async fn shutdown(self) -> Result<DrainReport, ServeError> {
        let _ = self.trigger.send(());
        self.task.await?
    }
}
