//! The original article's chat client, against `stream.ChatService/BidirectionalChat`.
//!
//! Run the server first, then the client:
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --release --example chat
//! ```
//!
//! You should see, one every 500 ms as the article's client sends them:
//!
//! ```text
//! Received: echo: Hello
//! Received: echo: How are you?
//! Received: echo: Goodbye
//! ```

use std::time::Duration;

use anyhow::Result;
use streambus::proto::stream::Message;
use streambus::proto::stream::chat_service_client::ChatServiceClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("STREAMBUS_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let channel = Endpoint::from_shared(url)?.connect().await?;
    let mut client = ChatServiceClient::new(channel);

    // The request stream is fed by a channel; its sender lives in its own task, as the
    // article's goroutine does.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let sender = tokio::spawn(async move {
        for content in ["Hello", "How are you?", "Goodbye"] {
            let message = Message {
                content: content.into(),
                timestamp: 0,
            };
            if tx.send(message).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Dropping `tx` ends the request stream: the article's `stream.CloseSend()`.
    });

    // Receive until the server ends the stream (the article's `io.EOF`).
    let mut echoes = client.bidirectional_chat(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(reply) = echoes.message().await? {
        println!("Received: {}", reply.content);
    }
    sender.await?;
    Ok(())
}
