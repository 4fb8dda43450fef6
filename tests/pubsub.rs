//! Publish/subscribe over gRPC: wildcards, queue groups, retained values, acks and
//! refusals, and the four gRPC modes of the bus service.

#[path = "common/harness.rs"]
mod harness;

use std::collections::HashSet;

use futures::StreamExt;
use harness::{In, TestServer, within};
use streambus::client::{ClientError, ClientSubscription};
use streambus::proto::streambus::v1 as pb;
use streambus::{ErrorCode, Event, Message, SubscriptionOptions, Topic};

async fn next_payload(sub: &mut ClientSubscription) -> (String, String) {
    match within("delivery", sub.next()).await {
        Some(Event::Delivery(d)) => (
            d.topic.as_str().to_owned(),
            String::from_utf8(d.payload.to_vec()).unwrap(),
        ),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// `*` matches one token and `>` the rest; each subscriber gets exactly what matches,
/// in publish order, through the SDK.
#[tokio::test]
async fn wildcards_route_over_grpc() {
    let server = TestServer::start().await;
    let subscriber = server.client("subscriber").await;
    let publisher = server.client("publisher").await;
    let mut temps = subscriber
        .subscribe("sensors.*.temperature", SubscriptionOptions::default())
        .await
        .unwrap();
    let mut all = subscriber
        .subscribe("sensors.>", SubscriptionOptions::default())
        .await
        .unwrap();
    let mut exact = subscriber
        .subscribe("sensors.dev2.humidity", SubscriptionOptions::default())
        .await
        .unwrap();
    for (topic, payload) in [
        ("sensors.dev1.temperature", "21.5"),
        ("sensors.dev2.humidity", "40"),
        ("sensors.dev2.temperature", "19.0"),
        ("other.dev1.temperature", "no"),
    ] {
        publisher.publish_acked(topic, payload).await.unwrap();
    }
    assert_eq!(next_payload(&mut temps).await.1, "21.5");
    assert_eq!(next_payload(&mut temps).await.1, "19.0");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_payload(&mut all).await.1);
    }
    assert_eq!(seen, ["21.5", "40", "19.0"]);
    assert_eq!(
        next_payload(&mut exact).await,
        ("sensors.dev2.humidity".into(), "40".into())
    );
    // Nothing else arrives: a later message shows up next, not "no".
    publisher
        .publish_acked("sensors.dev3.temperature", "last")
        .await
        .unwrap();
    assert_eq!(next_payload(&mut temps).await.1, "last");
}

/// A queue group delivers each message to exactly one member; together the members get
/// every message once.
#[tokio::test]
async fn queue_group_delivers_each_message_once() {
    let server = TestServer::start().await;
    let publisher = server.client("publisher").await;
    let mut members = Vec::new();
    for i in 0..3 {
        let client = server.client(&format!("worker-{i}")).await;
        let sub = client
            .subscribe("jobs.>", SubscriptionOptions::default().queue_group("workers"))
            .await
            .unwrap();
        members.push((client, sub));
    }
    let messages = (0..90)
        .map(|i| Message::new(Topic::new("jobs.resize").unwrap(), format!("{i}")))
        .collect();
    assert_eq!(publisher.publish_batch(messages, true).await.unwrap(), 90);
    let mut seen = HashSet::new();
    let mut per_member = Vec::new();
    for (_, sub) in &mut members {
        let mut n = 0;
        // Round robin: each member gets a third.
        for _ in 0..30 {
            assert!(seen.insert(next_payload(sub).await.1));
            n += 1;
        }
        per_member.push(n);
    }
    assert_eq!(seen.len(), 90);
    assert_eq!(per_member, [30, 30, 30]);
}

/// A retained value is replayed, flagged as retained, to a subscriber that arrives later.
#[tokio::test]
async fn retained_value_reaches_late_subscribers() {
    let server = TestServer::start().await;
    let publisher = server.client("publisher").await;
    let message = Message::new(Topic::new("config.mode").unwrap(), "eco").retained();
    publisher.publish_batch(vec![message], true).await.unwrap();
    let late = server.client("late").await;
    let mut sub = late
        .subscribe("config.*", SubscriptionOptions::default())
        .await
        .unwrap();
    match within("retained", sub.next()).await {
        Some(Event::Delivery(d)) => {
            assert!(d.retained);
            assert_eq!(&d.payload[..], b"eco");
        }
        other => panic!("expected the retained value, got {other:?}"),
    }
}

/// Acked publishes are acked with the count; bad ones are refused with a typed reason
/// and publish nothing, and fire-and-forget refusals are counted.
#[tokio::test]
async fn acks_and_refusals() {
    let server = TestServer::start().await;
    let mut raw = server.raw(None).await;
    raw.publish_acked(7, "a.b", &["1", "2", "3"]).await;
    raw.send(harness::publish(Some(8), "a.*", &["x"])).await;
    match raw.next().await {
        In::PublishRefused(r) => {
            assert_eq!(r.publish_id, 8);
            assert_eq!(r.code, pb::ErrorCode::InvalidArgument as i32);
            assert!(r.message.contains("wildcard"), "{}", r.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Without a publish id, the refusal is an error frame with request id 0.
    raw.send(harness::publish(None, "a..b", &["x"])).await;
    match raw.next().await {
        In::Error(e) => assert_eq!((e.request_id, e.code), (0, pb::ErrorCode::InvalidArgument as i32)),
        other => panic!("expected an error, got {other:?}"),
    }
    let topic = server.snapshot().await;
    assert_eq!(
        topic.topic("a.b").unwrap().next_sequence,
        4,
        "only the good batch was published"
    );

    let client = server.client("sdk").await;
    match client.publish_acked("a.>", "x").await {
        Err(ClientError::InvalidTopic(_)) => {}
        other => panic!("the SDK checks topics first, got {other:?}"),
    }
    let oversize = Message::new(Topic::new("a.b").unwrap(), vec![0u8; 1024 * 1024 + 1]);
    match client.publish_batch(vec![oversize], true).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::ResourceExhausted),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A batch larger than one frame is split, and every message is admitted.
    let big: Vec<Message> = (0..5)
        .map(|_| Message::new(Topic::new("a.big").unwrap(), vec![7u8; 600 * 1024]))
        .collect();
    assert_eq!(client.publish_batch(big, true).await.unwrap(), 5);
    client.ping().await.unwrap();
}

/// `Publish` (unary), `Subscribe` (server streaming) and `PublishStream` (client
/// streaming) work beside `Connect`.
#[tokio::test]
async fn the_other_three_modes() {
    let server = TestServer::start().await;
    let mut client = pb::bus_client::BusClient::new(server.channel().await);
    let mut stream = client
        .subscribe(pb::Subscribe {
            filter: "metrics.>".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let batch = |payloads: &[&str]| match harness::publish(Some(3), "metrics.cpu", payloads) {
        harness::Out::Publish(b) => b,
        _ => unreachable!(),
    };
    let ack = client.publish(batch(&["1", "2"])).await.unwrap().into_inner();
    assert_eq!((ack.publish_id, ack.accepted), (3, 2));
    let batches = futures::stream::iter([batch(&["3"]), batch(&["4", "5"])]);
    let ack = client.publish_stream(batches).await.unwrap().into_inner();
    assert_eq!(ack.accepted, 3);
    let mut payloads = Vec::new();
    while payloads.len() < 5 {
        match within("deliveries", stream.message())
            .await
            .unwrap()
            .and_then(|f| f.frame)
        {
            Some(In::Deliveries(b)) => {
                assert_eq!(b.topic, "metrics.cpu");
                payloads.extend(
                    b.deliveries
                        .iter()
                        .map(|d| String::from_utf8(d.payload.to_vec()).unwrap()),
                );
            }
            other => panic!("expected deliveries, got {other:?}"),
        }
    }
    assert_eq!(payloads, ["1", "2", "3", "4", "5"]);
    // A bad batch in a client stream ends it with INVALID_ARGUMENT.
    let status = client
        .publish_stream(futures::stream::iter([batch(&["6"]), {
            let mut b = batch(&["7"]);
            b.messages[0].topic = "metrics.*".into();
            b
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("1 messages were accepted before"),
        "{}",
        status.message()
    );
}

/// `Subscribe` answers once its subscription is in place: a publish made from another
/// connection right after the call returns (the response headers, which carry the
/// subscription id) is always delivered.
#[tokio::test]
async fn subscribe_is_ready_when_the_call_returns() {
    let server = TestServer::start().await;
    let mut listener = pb::bus_client::BusClient::new(server.channel().await);
    let mut publisher = pb::bus_client::BusClient::new(server.channel().await);
    let mut ids = HashSet::new();
    for round in 0..50 {
        let topic = format!("ready.r{round}");
        let response = listener
            .subscribe(pb::Subscribe {
                filter: topic.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let id = response
            .metadata()
            .get(streambus::server::SUBSCRIPTION_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .expect("the subscription id header");
        assert!(ids.insert(id), "subscription ids are unique");
        let mut stream = response.into_inner();
        let batch = match harness::publish(Some(round), &topic, &["now"]) {
            harness::Out::Publish(b) => b,
            _ => unreachable!(),
        };
        publisher.publish(batch).await.unwrap();
        match within("the delivery", stream.message())
            .await
            .unwrap()
            .and_then(|f| f.frame)
        {
            Some(In::Deliveries(b)) => {
                assert_eq!((b.topic.as_str(), b.subscription_id), (topic.as_str(), id));
                assert_eq!(&b.deliveries[0].payload[..], b"now");
            }
            other => panic!("round {round}: expected the delivery, got {other:?}"),
        }
    }
}
