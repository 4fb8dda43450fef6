//! Every bad input gets its typed error, in band when it is one frame among many, and
//! nothing else changes: another client keeps publishing and receiving throughout.

#[path = "common/harness.rs"]
mod harness;

use futures::StreamExt;
use harness::{In, Out, RawSession, TestServer, within};
use streambus::client::Client;
use streambus::proto::streambus::v1 as pb;
use streambus::{BusConfig, Event, SubscriptionOptions};
use tonic::Code;

/// A small-limits server.
async fn server() -> TestServer {
    let mut config = BusConfig::default();
    config.limits.max_message_bytes = 1024;
    config.limits.max_batch_messages = 8;
    config.limits.max_subscriptions_per_session = 2;
    config.limits.max_sessions = 4;
    TestServer::start_with(config).await
}

/// A client that publishes to itself; `check` proves it is still served.
struct Bystander {
    client: Client,
    sub: streambus::client::ClientSubscription,
    n: u64,
}

impl Bystander {
    async fn new(server: &TestServer) -> Bystander {
        let client = server.client("bystander").await;
        let sub = client
            .subscribe("bystander", SubscriptionOptions::default())
            .await
            .unwrap();
        Bystander { client, sub, n: 0 }
    }

    async fn check(&mut self) {
        self.n += 1;
        let payload = self.n.to_string();
        self.client.publish_acked("bystander", payload.clone()).await.unwrap();
        match within("bystander delivery", self.sub.next()).await {
            Some(Event::Delivery(d)) => assert_eq!(d.payload, payload.as_bytes()),
            other => panic!("bystander got {other:?}"),
        }
    }
}

fn code(c: pb::ErrorCode) -> i32 {
    c as i32
}

async fn expect_error(raw: &mut RawSession, request_id: u64, expected: pb::ErrorCode) -> String {
    match raw.next().await {
        In::Error(e) => {
            assert_eq!((e.request_id, e.code), (request_id, code(expected)), "{}", e.message);
            e.message
        }
        other => panic!("expected an error for request {request_id}, got {other:?}"),
    }
}

async fn expect_refused(raw: &mut RawSession, publish_id: u64, expected: pb::ErrorCode) -> String {
    match raw.next().await {
        In::PublishRefused(r) => {
            assert_eq!((r.publish_id, r.code), (publish_id, code(expected)), "{}", r.message);
            r.message
        }
        other => panic!("expected a refusal of {publish_id}, got {other:?}"),
    }
}

/// Bad frames among good ones: each gets an in-band error naming its request, and the
/// same stream goes on working.
#[tokio::test]
async fn bad_frames_get_in_band_errors() {
    let server = server().await;
    let mut bystander = Bystander::new(&server).await;
    let mut raw = server.raw(None).await;

    // Oversize message (payload over max_message_bytes, frame under the decode limit).
    raw.send(Out::Publish(pb::PublishBatch {
        publish_id: Some(1),
        messages: vec![pb::PublishMessage {
            topic: "a".into(),
            payload: vec![0u8; 1025].into(),
            ..Default::default()
        }],
        durable: false,
    }))
    .await;
    assert!(
        expect_refused(&mut raw, 1, pb::ErrorCode::ResourceExhausted)
            .await
            .contains("1024")
    );
    bystander.check().await;

    // Batch over max_batch_messages.
    raw.send(harness::publish(Some(2), "a", &["x"; 9])).await;
    assert!(
        expect_refused(&mut raw, 2, pb::ErrorCode::ResourceExhausted)
            .await
            .contains("limit of 8")
    );

    // Invalid topic and publish to a wildcard.
    raw.send(harness::publish(Some(3), "a..b", &["x"])).await;
    expect_refused(&mut raw, 3, pb::ErrorCode::InvalidArgument).await;
    raw.send(harness::publish(Some(4), "a.>", &["x"])).await;
    assert!(
        expect_refused(&mut raw, 4, pb::ErrorCode::InvalidArgument)
            .await
            .contains("wildcard")
    );
    bystander.check().await;

    // Invalid filter and unknown policy in a subscribe.
    raw.send(Out::Subscribe(pb::Subscribe {
        request_id: 5,
        filter: "a.>.b".into(),
        ..Default::default()
    }))
    .await;
    expect_error(&mut raw, 5, pb::ErrorCode::InvalidArgument).await;
    raw.send(Out::Subscribe(pb::Subscribe {
        request_id: 6,
        filter: "a".into(),
        overflow: 42,
        ..Default::default()
    }))
    .await;
    expect_error(&mut raw, 6, pb::ErrorCode::InvalidArgument).await;

    // Too many subscriptions for the session.
    raw.subscribe(7, "s.1", pb::OverflowPolicy::Unspecified, 0).await;
    raw.subscribe(8, "s.2", pb::OverflowPolicy::Unspecified, 0).await;
    raw.send(Out::Subscribe(pb::Subscribe {
        request_id: 9,
        filter: "s.3".into(),
        ..Default::default()
    }))
    .await;
    expect_error(&mut raw, 9, pb::ErrorCode::ResourceExhausted).await;

    // Unknown subscription.
    raw.send(Out::Unsubscribe(pb::Unsubscribe {
        request_id: 10,
        subscription_id: 999,
    }))
    .await;
    expect_error(&mut raw, 10, pb::ErrorCode::NotFound).await;

    // Empty frame, and credit without flow control.
    raw.send_frame(pb::ClientFrame { frame: None }).await;
    assert!(
        expect_error(&mut raw, 0, pb::ErrorCode::InvalidArgument)
            .await
            .contains("empty or unknown")
    );
    raw.send(Out::Credit(pb::CreditGrant { credits: 1 })).await;
    expect_error(&mut raw, 0, pb::ErrorCode::InvalidArgument).await;

    // The stream is still fully usable.
    raw.publish_acked(11, "a", &["fine"]).await;
    raw.barrier(12).await;
    bystander.check().await;
}

/// A frame from a newer protocol (a field this server does not know) is an unknown
/// frame: an in-band error, and the stream stays open.
#[tokio::test]
async fn unknown_frame_is_an_in_band_error() {
    /// `ClientFrame` of a future protocol version, with a frame kind at tag 99.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FutureFrame {
        #[prost(message, optional, tag = "1")]
        hello: Option<pb::Hello>,
        #[prost(message, optional, tag = "6")]
        ping: Option<pb::Ping>,
        #[prost(string, tag = "99")]
        teleport: String,
    }
    let server = server().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let frames = futures::stream::iter([
        FutureFrame {
            hello: Some(pb::Hello::default()),
            ..Default::default()
        },
        FutureFrame {
            teleport: "now".into(),
            ..Default::default()
        },
        FutureFrame {
            ping: Some(pb::Ping { nonce: 5 }),
            ..Default::default()
        },
    ]);
    let codec = tonic_prost::ProstCodec::<FutureFrame, pb::ServerFrame>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/streambus.v1.Bus/Connect");
    let mut responses = grpc
        .streaming(tonic::Request::new(frames), path, codec)
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        within("frame", responses.message())
            .await
            .unwrap()
            .unwrap()
            .frame
            .unwrap()
    };
    assert!(matches!(next().await, In::Welcome(_)));
    match next().await {
        In::Error(e) => assert_eq!(e.code, code(pb::ErrorCode::InvalidArgument)),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(matches!(next().await, In::Pong(p) if p.nonce == 5));
}

/// Protocol violations end the stream with INVALID_ARGUMENT; a frame over the decode
/// limit with RESOURCE_EXHAUSTED; other clients are untouched.
#[tokio::test]
async fn protocol_violations_end_the_stream() {
    let server = server().await;
    let mut bystander = Bystander::new(&server).await;

    // First frame is not hello.
    let mut raw = RawSession::open(server.channel().await).await;
    raw.send(Out::Ping(pb::Ping { nonce: 1 })).await;
    let status = raw.start().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("hello"));

    // Hello twice.
    let mut raw = server.raw(None).await;
    raw.send(Out::Hello(pb::Hello::default())).await;
    let status = raw.end_status().await.expect("ended with a status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    bystander.check().await;

    // A frame over max_frame_bytes (max_message_bytes + 64 KiB).
    let mut raw = server.raw(None).await;
    raw.send(harness::publish(Some(1), "a", &[&"x".repeat(100 * 1024)]))
        .await;
    let status = raw.end_status().await.expect("ended with a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    bystander.check().await;
}

/// Over `max_sessions`, a new stream is refused with RESOURCE_EXHAUSTED; closing one
/// makes room again.
#[tokio::test]
async fn too_many_sessions() {
    let server = server().await;
    let mut bystander = Bystander::new(&server).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.raw(None).await);
    }
    let mut refused = RawSession::open(server.channel().await).await;
    refused.send(Out::Hello(pb::Hello::default())).await;
    let status = refused.start().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    bystander.check().await;

    let mut first = open.remove(0);
    first.close_send();
    assert!(
        first.end_status().await.is_none(),
        "a client's CloseSend ends the stream OK"
    );
    harness::wait_until("a session slot is free", || async {
        server.snapshot().await.sessions.len() < 4
    })
    .await;
    open.push(server.raw(None).await);
    bystander.check().await;
}

/// A stream that sends nothing for `grpc.idle_timeout_ms` is ended with UNAVAILABLE.
#[tokio::test]
async fn idle_streams_are_ended() {
    let mut config = BusConfig::default();
    config.grpc.idle_timeout_ms = 200;
    let server = TestServer::start_with(config).await;
    let mut raw = server.raw(None).await;
    let status = raw.end_status().await.expect("ended with a status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("idle"), "{status:?}");
    harness::wait_until("the session is gone", || async {
        server.snapshot().await.sessions.is_empty()
    })
    .await;
}

/// Frames keep a stream alive past `grpc.idle_timeout_ms`: pings every 50 ms for three
/// times the timeout, each answered, then silence ends it with UNAVAILABLE.
#[tokio::test]
async fn frames_keep_a_stream_from_idling() {
    let mut config = BusConfig::default();
    config.grpc.idle_timeout_ms = 200;
    let server = TestServer::start_with(config).await;
    let mut raw = server.raw(None).await;
    for nonce in 0..12 {
        raw.send(Out::Ping(pb::Ping { nonce })).await;
        match raw.next().await {
            In::Pong(p) => assert_eq!(p.nonce, nonce),
            other => panic!("expected a pong, got {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let status = raw.end_status().await.expect("ended with a status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("idle"), "{status:?}");
}
