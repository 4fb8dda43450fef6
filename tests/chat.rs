//! The article's `stream.ChatService/BidirectionalChat`, exactly as the article describes.

#[path = "common/harness.rs"]
mod harness;

use std::time::{SystemTime, UNIX_EPOCH};

use harness::{TestServer, wait_until, within};
use streambus::proto::stream::Message;
use streambus::proto::stream::chat_service_client::ChatServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
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
        let mut client = ChatServiceClient::new(channel.clone());
        let (tx, rx) = mpsc::channel(16);
        let echoes = client
            .bidirectional_chat(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
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
/// nothing: the stream is held back (buffer, topic admission, HTTP/2 windows) and every
/// echo arrives, in order, once the client reads.
#[tokio::test]
async fn a_client_that_does_not_read_is_held_back_and_loses_nothing() {
    const MESSAGES: usize = 20_000;
    let server = TestServer::start().await;
    let mut client = ChatServiceClient::new(server.channel().await);
    let (tx, rx) = mpsc::channel(64);
    let mut echoes = client
        .bidirectional_chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let padding = "x".repeat(1000);
    let sender = tokio::spawn(async move {
        for n in 0..MESSAGES {
            tx.send(Message {
                content: format!("{n:05}{padding}"),
                timestamp: 0,
            })
            .await
            .unwrap();
        }
    });
    // 20 MB cannot all be in flight: the sender is held back while nobody reads.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!sender.is_finished(), "nothing held the sender back");
    let mut n = 0;
    while let Some(reply) = within("echo", echoes.message()).await.unwrap() {
        assert_eq!(&reply.content[..11], format!("echo: {n:05}"));
        n += 1;
    }
    assert_eq!(n, MESSAGES);
    sender.await.unwrap();
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
