//! The transport ceiling: the article's `ChatService` on plain tonic, no actors, no bus.
//!
//! Each message is answered as the article's Go server does (`"echo: " + content`,
//! timestamp = now in unix seconds), straight from the stream handler.

use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use streambus::proto::stream::Message;
use streambus::proto::stream::chat_service_server::{ChatService, ChatServiceServer};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// The echo service with nothing behind it.
#[derive(Debug, Default, Clone, Copy)]
pub struct BaselineChat;

type Echoes = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ChatService for BaselineChat {
    type BidirectionalChatStream = Echoes;

    async fn bidirectional_chat(&self, request: Request<Streaming<Message>>) -> Result<Response<Echoes>, Status> {
        let echoes = request.into_inner().map(|message| {
            message.map(|m| Message {
                content: format!("echo: {}", m.content),
                timestamp: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            })
        });
        Ok(Response::new(Box::pin(echoes)))
    }
}

/// Serves the baseline on `listener` until the process ends: with tonic's default
/// HTTP/2 settings, or with `streambus serve`'s (`bus_transport`: its windows and
/// keepalive, see [`streambus::server::http2_settings`]) so that a comparison measures
/// the bus's actors and nothing else.
pub async fn serve(listener: TcpListener, bus_transport: bool) -> Result<(), tonic::transport::Error> {
    let builder = tonic::transport::Server::builder();
    if bus_transport {
        let config = streambus::BusConfig::default();
        streambus::server::http2_settings(builder, &config)
            .add_service(ChatServiceServer::new(BaselineChat))
            .serve_with_incoming(streambus::server::tcp_incoming(listener, &config))
            .await
    } else {
        let mut builder = builder;
        builder
            .add_service(ChatServiceServer::new(BaselineChat))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await
    }
}
