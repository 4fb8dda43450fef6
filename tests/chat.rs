//! The article's `stream.ChatService/BidirectionalChat`, exactly as the article describes.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::{SystemTime, UNIX_EPOCH};

use harness::{TestServer, wait_until, within};
use proxy::Proxy;
use streambus::proto::stream::Message;
use streambus::proto::stream::chat_service_client::ChatServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Opens a chat stream on `channel`: the sender of its messages and its echoes.
async fn open_chat(channel: Channel, buffer: usize) -> (mpsc::Sender<Message>, tonic::Streaming<Message>) {
    let (tx, rx) = mpsc::channel(buffer);
    let echoes = ChatServiceClient::new(channel)
        .bidirectional_chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, echoes)
}

/// Sends `n` numbered messages of 1005 bytes ("00042xxx…") in a task, until done or the
/// stream is gone; the task returns how many it sent.
fn flood(tx: mpsc::Sender<Message>, n: usize) -> tokio::task::JoinHandle<usize> {
    let padding = "x".repeat(1000);
    tokio::spawn(async move {
        for i in 0..n {
            let message = Message {
                content: format!("{i:05}{padding}"),
                timestamp: 0,
            };
            if tx.send(message).await.is_err() {
                return i;
            }
        }
        n
    })
}

/// Each message is answered with "echo: " + content and the server's unix time in
/// seconds, in order; after the client's CloseSend every echo still arrives and the
/// stream ends cleanly (the article's `io.EOF`).
#[tokio::test]
async fn echoes_as_the_article_describes() {
    let server = TestServer::start().await;
    let mut client = ChatServiceClient::new(server.channel().await);
    let (tx, rx) = mpsc::channel(16);
    let before = now();
    let mut echoes = client
        .bidirectional_chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // One task sends, as in the article; the test receives.
    let sender = tokio::spawn(async move {
        for content in ["hello", "world", "", "你好, streambus"] {
            tx.send(Message {
                content: content.into(),
                timestamp: 0,
            })
            .await
            .unwrap();
        }
    });
    let mut received = Vec::new();
    while let Some(reply) = within("echo", echoes.message()).await.unwrap() {
        assert!(reply.timestamp >= before && reply.timestamp <= now(), "{reply:?}");
        received.push(reply.content);
    }
    sender.await.unwrap();
    assert_eq!(
        received,
        ["echo: hello", "echo: world", "echo: ", "echo: 你好, streambus"]
    );
}

/// Each chat stream is a session actor of its own, visible in the snapshot while the
/// stream is open and gone after it ends; many streams echo concurrently without mixing.
#[tokio::test]
async fn each_stream_is_a_session() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut streams = Vec::new();
    for i in 0..10 {
        let (tx, echoes) = open_chat(channel.clone(), 16).await;
        streams.push((i, tx, echoes));
    }
    wait_until("ten chat sessions", || async {
        server
            .snapshot()
            .await
            .sessions
            .iter()
            .filter(|s| s.name == "chat")
            .count()
            == 10
    })
    .await;
    for (i, tx, _) in &streams {
        for n in 0..50 {
            tx.send(Message {
                content: format!("{i}-{n}"),
                timestamp: 0,
            })
            .await
            .unwrap();
        }
    }
    for (i, tx, mut echoes) in streams {
        drop(tx);
        let mut n = 0;
        while let Some(reply) = within("echo", echoes.message()).await.unwrap() {
            assert_eq!(reply.content, format!("echo: {i}-{n}"));
            n += 1;
        }
        assert_eq!(n, 50);
    }
    wait_until("no sessions left", || async {
        server.snapshot().await.sessions.is_empty()
    })
    .await;
}

/// A client that sends far more than the server buffers before reading anything loses
/// nothing: the stream is held back (the stream's echo credits, HTTP/2 windows) and
/// every echo arrives, in order, once the client reads.
#[tokio::test]
async fn a_client_that_does_not_read_is_held_back_and_loses_nothing() {
    const MESSAGES: usize = 20_000;
    let server = TestServer::start().await;
    let (tx, mut echoes) = open_chat(server.channel().await, 64).await;
    let sender = flood(tx, MESSAGES);
    // 20 MB cannot all be in flight: the sender is held back while nobody reads.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!sender.is_finished(), "nothing held the sender back");
    let mut n = 0;
    while let Some(reply) = within("echo", echoes.message()).await.unwrap() {
        assert_eq!(&reply.content[..11], format!("echo: {n:05}"));
        n += 1;
    }
    assert_eq!(n, MESSAGES);
    assert_eq!(sender.await.unwrap(), MESSAGES);
}

/// A chat stream whose topic has no room (another subscriber of the chat topic does
/// not read, and the topic's mailbox of 4 is full) has its publishes wait for room
/// rather than go through at once: nothing is lost, and once the other subscriber
/// reads, every echo arrives in order.
#[tokio::test]
async fn publishes_that_wait_for_room_lose_nothing() {
    const MESSAGES: usize = 200;
    let mut config = streambus::BusConfig::default();
    config.topics.mailbox_messages = 4;
    let server = TestServer::start_with(config).await;
    let (tx, mut echoes) = open_chat(server.channel().await, 64).await;
    tx.send(Message {
        content: "first".into(),
        timestamp: 0,
    })
    .await
    .unwrap();
    assert_eq!(
        within("echo", echoes.message()).await.unwrap().unwrap().content,
        "echo: first"
    );
    let bus = server.bus().clone();
    let topic = bus.snapshot().await.unwrap().topics[0].topic.clone();
    assert!(topic.as_str().starts_with("$chat."), "{topic}");
    let options = streambus::SubscriptionOptions::default()
        .overflow(streambus::OverflowPolicy::Block)
        .buffer(1, 64 * 1024);
    let mut blocker = bus.subscribe(topic.as_str(), options).await.unwrap();
    let sender = flood(tx, MESSAGES);
    wait_until("the chat topic's mailbox full", || async {
        bus.snapshot()
            .await
            .unwrap()
            .topics
            .iter()
            .any(|t| t.topic == topic && t.mailbox_messages == t.mailbox_capacity_messages)
    })
    .await;
    let read = tokio::spawn(async move {
        let mut n = 0;
        while n < MESSAGES {
            match within("the blocker's delivery", futures::StreamExt::next(&mut blocker)).await {
                Some(streambus::Event::Delivery(_)) => n += 1,
                other => panic!("the blocker got {other:?}"),
            }
        }
    });
    for n in 0..MESSAGES {
        let reply = within("echo", echoes.message()).await.unwrap().unwrap();
        assert_eq!(&reply.content[..11], format!("echo: {n:05}"));
    }
    within("the blocker's reads", read).await.unwrap();
    assert_eq!(sender.await.unwrap(), MESSAGES);
}

/// A server shutting down ends an open chat stream with UNAVAILABLE after the echoes of
/// what it had read, and its session is gone.
#[tokio::test]
async fn shutdown_ends_a_chat_stream_with_unavailable() {
    let server = TestServer::start().await;
    let mut client = ChatServiceClient::new(server.channel().await);
    let (tx, rx) = mpsc::channel(16);
    let mut echoes = client
        .bidirectional_chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for content in ["one", "two"] {
        tx.send(Message {
            content: content.into(),
            timestamp: 0,
        })
        .await
        .unwrap();
        let reply = within("echo", echoes.message()).await.unwrap().unwrap();
        assert_eq!(reply.content, format!("echo: {content}"));
    }
    let bus = server.bus().clone();
    let shutdown = tokio::spawn(server.shutdown());
    let status = within("end of stream", echoes.message()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    within("shutdown", shutdown).await.unwrap();
    assert!(matches!(bus.snapshot().await, Err(streambus::BusError::Closed)));
    drop(tx);
}

/// A client held back because it does not read, whose connection then drops, leaves
/// nothing behind: its session closes and every task of its stream ends (its body, held
/// with echoes the client never took, is dropped with the connection).
#[tokio::test]
async fn a_held_back_client_whose_connection_drops_leaves_nothing() {
    let mut config = streambus::BusConfig::default();
    // The chat topic's actor is reaped soon after it goes idle, so that the task count
    // can come back to where it was.
    config.topics.idle_timeout_ms = 50;
    // The server gets a runtime of its own, so that its task count is its alone.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_runtime.spawn(TestServer::start_with(config)).await.unwrap();
    let tasks = || server_runtime.metrics().num_alive_tasks();
    let before = tasks();

    let target: std::net::SocketAddr = server.url().trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(target).await;
    // A small receive window: the server can hand few echoes to the transport, so it
    // stops reading the client long before the client runs out of sending.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let (tx, _echoes) = open_chat(channel, 64).await;
    let sender = flood(tx, 20_000);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!sender.is_finished(), "nothing held the sender back");
    assert!(tasks() > before, "the stream runs tasks on the server");
    sender.abort();

    proxy.stop();
    wait_until("no session left", || async {
        let snapshot = server.snapshot().await;
        snapshot.sessions.is_empty() && snapshot.session_manager.sessions == 0
    })
    .await;
    wait_until("its topic reaped", || async {
        server.snapshot().await.topics.is_empty()
    })
    .await;
    wait_until("every task of the stream gone", || async { tasks() <= before }).await;
    // And it stays so: nothing left waiting wakes up later.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(tasks() <= before, "{} tasks left, {before} before", tasks());
    drop(server);
    server_runtime.shutdown_background();
}
