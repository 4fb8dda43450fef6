//! The one harness of the end-to-end tests: a real server on `127.0.0.1:0`, the SDK
//! client, and a raw `Connect` stream for protocol-level checks.
//!
//! Each test file includes it with `#[path = "common/harness.rs"] mod harness;` and uses
//! the parts it needs.

#![allow(dead_code, unreachable_pub, reason = "each test file uses a different part")]

use std::future::Future;
use std::time::Duration;

use streambus::client::{Client, ClientOptions, Credit};
use streambus::proto::streambus::v1 as pb;
use streambus::server::{self, ServerHandle};
use streambus::{Bus, BusConfig, BusSnapshot};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub use pb::client_frame::Frame as Out;
pub use pb::server_frame::Frame as In;

/// How long any single wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running server on a free loopback port.
pub struct TestServer {
    pub handle: ServerHandle,
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(BusConfig::default()).await
    }

    /// A server with `config` (its `grpc.addr` is ignored: the port is chosen freely).
    pub async fn start_with(config: BusConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestServer::start_on(config, listener).await
    }

    /// A server on an already bound listener.
    pub async fn start_on(config: BusConfig, listener: tokio::net::TcpListener) -> TestServer {
        let bus = Bus::start(config).await.unwrap();
        TestServer {
            handle: server::start(bus, listener),
        }
    }

    pub fn url(&self) -> String {
        self.handle.url()
    }

    pub fn bus(&self) -> &Bus {
        self.handle.bus()
    }

    pub async fn snapshot(&self) -> BusSnapshot {
        self.bus().snapshot().await.unwrap()
    }

    /// A gRPC channel to the server.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url()).unwrap().connect().await.unwrap()
    }

    /// An SDK client without reconnects (tests want to see failures).
    pub async fn client(&self, name: &str) -> Client {
        self.client_with(ClientOptions::new(self.url()).name(name).reconnect(false))
            .await
    }

    pub async fn client_with(&self, options: ClientOptions) -> Client {
        Client::connect_with(options).await.unwrap()
    }

    /// An SDK client with manual flow control starting at `initial` credits.
    pub async fn client_with_credit(&self, name: &str, initial: u64) -> Client {
        let options = ClientOptions::new(self.url())
            .name(name)
            .reconnect(false)
            .credit(Credit::Manual(initial));
        self.client_with(options).await
    }

    /// A raw `Connect` stream that has said hello (and read the welcome).
    pub async fn raw(&self, initial_credit: Option<u64>) -> RawSession {
        self.raw_hello(pb::Hello {
            client_name: "raw".into(),
            initial_credit,
            ..Default::default()
        })
        .await
    }

    /// A raw `Connect` stream that has said `hello` (and read the welcome).
    pub async fn raw_hello(&self, hello: pb::Hello) -> RawSession {
        let mut raw = RawSession::open(self.channel().await).await;
        raw.send(Out::Hello(hello)).await;
        raw.start().await.unwrap();
        match raw.next().await {
            In::Welcome(_) => raw,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Shuts the server down gracefully.
    pub async fn shutdown(self) {
        self.handle.shutdown().await.unwrap();
    }
}

/// A `Connect` stream driven frame by frame.
pub struct RawSession {
    tx: Option<mpsc::Sender<pb::ClientFrame>>,
    rx: Option<mpsc::Receiver<pb::ClientFrame>>,
    client: pb::bus_client::BusClient<Channel>,
    pub responses: Option<tonic::Streaming<pb::ServerFrame>>,
}

impl RawSession {
    /// A stream not yet started: queue frames with `send`, then `start`.
    pub async fn open(channel: Channel) -> RawSession {
        let (tx, rx) = mpsc::channel(1024);
        RawSession {
            tx: Some(tx),
            rx: Some(rx),
            client: pb::bus_client::BusClient::new(channel),
            responses: None,
        }
    }

    /// Starts the call; fails with the server's status if it refuses the stream.
    pub async fn start(&mut self) -> Result<(), tonic::Status> {
        let rx = self.rx.take().expect("started once");
        let response = self.client.connect(ReceiverStream::new(rx)).await?;
        self.responses = Some(response.into_inner());
        Ok(())
    }

    pub async fn send(&self, frame: Out) {
        self.send_frame(pb::ClientFrame { frame: Some(frame) }).await;
    }

    pub async fn send_frame(&self, frame: pb::ClientFrame) {
        self.tx.as_ref().expect("open").send(frame).await.unwrap();
    }

    /// Ends the request stream (CloseSend).
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next frame, or the stream's end/status.
    pub async fn try_next(&mut self) -> Result<Option<In>, tonic::Status> {
        let responses = self.responses.as_mut().expect("started");
        let frame = tokio::time::timeout(PATIENCE, responses.message())
            .await
            .expect("no server frame in time")?;
        Ok(frame.map(|f| f.frame.expect("server frames are never empty")))
    }

    /// The next frame; panics at the end of the stream.
    pub async fn next(&mut self) -> In {
        match self.try_next().await {
            Ok(Some(frame)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads frames until `pick` returns something, panicking on the stream's end.
    pub async fn next_matching<T>(&mut self, mut pick: impl FnMut(&In) -> Option<T>) -> T {
        loop {
            let frame = self.next().await;
            if let Some(t) = pick(&frame) {
                return t;
            }
        }
    }

    /// The status that ends the stream (after any frames before it).
    pub async fn end_status(&mut self) -> Option<tonic::Status> {
        loop {
            match self.try_next().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    }

    /// Sends a ping and waits for its pong: every frame the server queued before the
    /// ping was handled comes first, collected here.
    pub async fn barrier(&mut self, nonce: u64) -> Vec<In> {
        self.send(Out::Ping(pb::Ping { nonce })).await;
        let mut before = Vec::new();
        loop {
            match self.next().await {
                In::Pong(p) if p.nonce == nonce => return before,
                other => before.push(other),
            }
        }
    }

    pub async fn subscribe(&mut self, request_id: u64, filter: &str, policy: pb::OverflowPolicy, buffer: u64) -> u64 {
        self.send(Out::Subscribe(pb::Subscribe {
            request_id,
            filter: filter.into(),
            queue_group: String::new(),
            overflow: policy as i32,
            buffer_messages: buffer,
            buffer_bytes: 0,
        }))
        .await;
        match self.next().await {
            In::Subscribed(s) if s.request_id == request_id => s.subscription_id,
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    /// Publishes a batch of `payloads` on `topic` and waits for its ack.
    pub async fn publish_acked(&mut self, publish_id: u64, topic: &str, payloads: &[&str]) {
        self.send(publish(Some(publish_id), topic, payloads)).await;
        let ack = self
            .next_matching(|f| match f {
                In::PublishAck(a) if a.publish_id == publish_id => Some(*a),
                In::PublishRefused(r) if r.publish_id == publish_id => panic!("refused: {r:?}"),
                _ => None,
            })
            .await;
        assert_eq!(ack.accepted, payloads.len() as u64);
    }
}

/// A publish frame.
pub fn publish(publish_id: Option<u64>, topic: &str, payloads: &[&str]) -> Out {
    Out::Publish(pb::PublishBatch {
        publish_id,
        messages: payloads
            .iter()
            .map(|p| pb::PublishMessage {
                topic: topic.into(),
                payload: bytes::Bytes::copy_from_slice(p.as_bytes()),
                headers: vec![],
                retain: false,
            })
            .collect(),
        durable: false,
    })
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
pub async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_for(what, PATIENCE, check).await;
}

/// Polls `check` until it holds, failing the test after `patience`.
pub async fn wait_until_for<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `f` or fails the test after [`PATIENCE`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
