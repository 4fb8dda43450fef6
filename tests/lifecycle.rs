//! Stream and server lifecycle: disconnects, graceful shutdown, health and reflection,
//! and the SDK's reconnect.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/proxy.rs"]
mod proxy;

use futures::StreamExt;
use harness::{In, TestServer, wait_until, within};
use streambus::client::{Client, ClientOptions};
use streambus::proto::streambus::v1 as pb;
use streambus::{BusConfig, Event, SubscriptionOptions};

/// A client that vanishes (dropped without a goodbye) leaves no session behind, with or
/// without subscriptions.
#[tokio::test]
async fn disconnect_leaves_no_session() {
    let server = TestServer::start().await;
    let client = server.client("leaver").await;
    let _sub = client.subscribe("a.>", SubscriptionOptions::default()).await.unwrap();
    let mut raw = server.raw(None).await;
    raw.subscribe(1, "b", pb::OverflowPolicy::Block, 0).await;
    let chat_channel = server.channel().await;
    let (chat_tx, chat_rx) = tokio::sync::mpsc::channel(1);
    let chat = streambus::proto::stream::chat_service_client::ChatServiceClient::new(chat_channel)
        .bidirectional_chat(tokio_stream::wrappers::ReceiverStream::new(chat_rx))
        .await
        .unwrap();
    wait_until("three sessions", || async {
        server.snapshot().await.sessions.len() == 3
    })
    .await;

    drop(raw);
    drop(chat);
    drop(chat_tx);
    drop(_sub);
    drop(client);
    wait_until("no session left", || async {
        let snapshot = server.snapshot().await;
        snapshot.sessions.is_empty() && snapshot.session_manager.sessions == 0
    })
    .await;
}

/// Graceful shutdown drains: what was acked reaches the subscriber before its stream
/// ends with UNAVAILABLE, the bus stops, and new connections are refused.
#[tokio::test]
async fn graceful_shutdown_drains() {
    let server = TestServer::start().await;
    let mut subscriber = server.raw(Some(0)).await;
    subscriber.subscribe(1, "drain", pb::OverflowPolicy::Block, 0).await;
    let mut publisher = server.raw(None).await;
    let payloads: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
    for (i, chunk) in payloads.chunks(100).enumerate() {
        publisher.publish_acked(i as u64, "drain", chunk).await;
    }
    let url = server.url();
    let bus = server.bus().clone();
    // The subscriber has granted nothing yet: everything waits at the server.
    let shutdown = tokio::spawn(server.shutdown());
    subscriber
        .send(harness::Out::Credit(pb::CreditGrant { credits: 10_000 }))
        .await;
    let mut sequences = Vec::new();
    let status = loop {
        match subscriber.try_next().await {
            Ok(Some(In::Deliveries(b))) => sequences.extend(b.deliveries.iter().map(|d| d.sequence)),
            Ok(Some(_)) => {}
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(sequences, (1..=500).collect::<Vec<_>>());
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unavailable));
    within("shutdown", shutdown).await.unwrap();
    assert!(matches!(bus.snapshot().await, Err(streambus::BusError::Closed)));
    assert!(
        Client::connect_with(ClientOptions::new(url).reconnect(false))
            .await
            .is_err()
    );
}

/// gRPC health answers SERVING for the bus and chat services, and reflection lists them
/// through both v1 and v1alpha (grpcurl speaks v1alpha).
#[tokio::test]
async fn health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::{v1, v1alpha};

    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["streambus.v1.Bus", "stream.ChatService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service}");
    }

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let services = match responses.next().await.unwrap().unwrap().message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };
    assert!(services.contains(&"streambus.v1.Bus".to_owned()), "{services:?}");
    assert!(services.contains(&"stream.ChatService".to_owned()), "{services:?}");

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol("stream.ChatService".into()),
        ),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) => {
            assert!(!files.file_descriptor_proto.is_empty());
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// When the server goes away and comes back on the same address, the SDK reconnects
/// with backoff and resubscribes: the same subscription stream receives again.
#[tokio::test]
async fn sdk_reconnects_and_resubscribes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TestServer::start_on(BusConfig::default(), listener).await;
    let mut options = ClientOptions::new(server.url()).name("survivor");
    options.reconnect_initial = std::time::Duration::from_millis(20);
    options.reconnect_max = std::time::Duration::from_millis(200);
    let client = Client::connect_with(options).await.unwrap();
    let mut sub = client
        .subscribe("alerts.*", SubscriptionOptions::default().queue_group("g"))
        .await
        .unwrap();
    client.publish_acked("alerts.one", "before").await.unwrap();
    assert!(matches!(within("before", sub.next()).await, Some(Event::Delivery(d)) if d.payload == "before"));

    server.shutdown().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = TestServer::start_on(BusConfig::default(), listener).await;
    wait_until("the client reconnected and resubscribed", || async {
        let snapshot = server.snapshot().await;
        client.reconnects() >= 1
            && snapshot
                .sessions
                .iter()
                .any(|s| s.name == "survivor" && s.subscriptions.len() == 1)
    })
    .await;
    client.publish_acked("alerts.two", "after").await.unwrap();
    let next = within("after", sub.next()).await;
    assert!(
        matches!(&next, Some(Event::Delivery(d)) if d.payload == "after"),
        "{next:?}"
    );
}

/// A server that goes silent without closing the connection (a black hole) is found by
/// the SDK's pings: no frame within `ping_timeout` of a ping and the client moves to
/// the next server and resubscribes there. A connect into the black hole gives up after
/// `ping_timeout` with `Unresponsive` instead of waiting forever.
#[tokio::test]
async fn sdk_leaves_a_silent_server() {
    use std::time::Duration;
    let server = TestServer::start().await;
    let proxy = proxy::Proxy::start(server.url().trim_start_matches("http://").parse().unwrap()).await;
    let via = format!("http://{}", proxy.addr);
    let mut options = ClientOptions::new(via.clone()).fallback(server.url()).name("pinger");
    options.ping_interval = Duration::from_millis(200);
    // Long enough that a loaded machine's pong is not taken for silence.
    options.ping_timeout = Duration::from_millis(1000);
    options.reconnect_initial = Duration::from_millis(20);
    options.reconnect_max = Duration::from_millis(200);
    let client = Client::connect_with(options.clone()).await.unwrap();
    let mut sub = client
        .subscribe("quiet.*", SubscriptionOptions::default())
        .await
        .unwrap();
    // Quiet for several ping intervals: answered pings keep the connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.reconnects(), 0, "a server that answers its pings is kept");

    // Behind the same proxy, without a server to fail over to: closed once the proxy
    // is silent, it must not wait for the server's end of the call forever.
    let mut held_options = options.clone();
    held_options.fallback_urls.clear();
    held_options.name = "held".into();
    let held = Client::connect_with(held_options).await.unwrap();
    let mut held_sub = held.subscribe("quiet.*", SubscriptionOptions::default()).await.unwrap();

    proxy.freeze();
    held.close();
    let ended = within("a closed client to let go of a silent server", held_sub.next()).await;
    assert!(matches!(ended, None | Some(Event::Closed(_))), "{ended:?}");
    wait_until(
        "the client left the silent server and resubscribed directly",
        || async {
            // The session behind the proxy stays until the server's own keepalive reaps it.
            let sessions = server.snapshot().await.sessions;
            client.reconnects() >= 1
                && sessions
                    .iter()
                    .filter(|s| s.name == "pinger" && s.subscriptions.len() == 1)
                    .count()
                    == 2
        },
    )
    .await;
    client.publish_acked("quiet.after", "direct").await.unwrap();
    let next = within("delivery after the move", sub.next()).await;
    assert!(
        matches!(&next, Some(Event::Delivery(d)) if d.payload == "direct"),
        "{next:?}"
    );

    let mut alone = options;
    alone.fallback_urls.clear();
    alone.name = "late".into();
    let started = tokio::time::Instant::now();
    match within("a connect into the black hole", Client::connect_with(alone)).await {
        Err(streambus::client::ClientError::Unresponsive(t)) => assert_eq!(t, Duration::from_millis(1000)),
        other => panic!("expected Unresponsive, got {:?}", other.map(|_| ())),
    }
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

/// With a list of servers, a client whose server goes away for good reconnects to the
/// next one and resubscribes there; a first server that does not answer is skipped at
/// connect.
#[tokio::test]
async fn sdk_fails_over_to_the_next_server() {
    let (a, b) = (TestServer::start().await, TestServer::start().await);
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let mut options = ClientOptions::new(a.url()).fallback(b.url()).name("roamer");
    options.reconnect_initial = std::time::Duration::from_millis(20);
    options.reconnect_max = std::time::Duration::from_millis(200);
    let client = Client::connect_with(options).await.unwrap();
    let mut sub = client
        .subscribe("roam.*", SubscriptionOptions::default())
        .await
        .unwrap();
    assert!(a.snapshot().await.sessions.iter().any(|s| s.name == "roamer"));

    a.shutdown().await;
    wait_until("the client moved to the second server and resubscribed", || async {
        let snapshot = b.snapshot().await;
        client.reconnects() >= 1
            && snapshot
                .sessions
                .iter()
                .any(|s| s.name == "roamer" && s.subscriptions.len() == 1)
    })
    .await;
    let other = b.client("other").await;
    other.publish_acked("roam.x", "on b").await.unwrap();
    let next = within("a delivery from the second server", sub.next()).await;
    assert!(
        matches!(&next, Some(Event::Delivery(d)) if d.payload == "on b"),
        "{next:?}"
    );

    // Connecting with a dead first server lands on the next one.
    let skipped = Client::connect_with(
        ClientOptions::new(gone)
            .fallback(b.url())
            .name("skipper")
            .reconnect(false),
    )
    .await
    .unwrap();
    skipped.publish_acked("roam.y", "via b").await.unwrap();
    assert!(b.snapshot().await.sessions.iter().any(|s| s.name == "skipper"));
    b.shutdown().await;
}
