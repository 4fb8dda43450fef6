//! Flow control over gRPC: client credits bound what the server sends, and a full
//! subscriber buffer shows its overflow policy to the client as gap or close frames.

#[path = "common/harness.rs"]
mod harness;

use harness::{In, Out, RawSession, TestServer, wait_until};
use streambus::proto::streambus::v1 as pb;

const PAYLOADS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

fn sequences(frames: &[In]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            In::Deliveries(b) => Some(b.deliveries.iter().map(|d| d.sequence)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Reads frames until `deliveries` deliveries arrived.
async fn collect(raw: &mut RawSession, deliveries: usize) -> Vec<In> {
    let mut frames = Vec::new();
    while sequences(&frames).len() < deliveries {
        frames.push(raw.next().await);
    }
    frames
}

/// The server never has more deliveries out than the client granted: with 5 initial
/// credits exactly 5 of 20 arrive (a ping/pong barrier shows nothing else is on the
/// way), each grant releases exactly that many more, in order.
#[tokio::test]
async fn credits_bound_deliveries() {
    let server = TestServer::start().await;
    let mut raw = server.raw(Some(5)).await;
    raw.subscribe(1, "t", pb::OverflowPolicy::Block, 0).await;
    let mut publisher = server.raw(None).await;
    let twenty: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let twenty: Vec<&str> = twenty.iter().map(String::as_str).collect();
    publisher.publish_acked(1, "t", &twenty).await;

    let first = collect(&mut raw, 5).await;
    assert_eq!(sequences(&first), [1, 2, 3, 4, 5]);
    // The remaining 15 are at the server, ready; without credit none is sent.
    let between = raw.barrier(100).await;
    assert_eq!(sequences(&between), Vec::<u64>::new(), "sent beyond the credit");

    raw.send(Out::Credit(pb::CreditGrant { credits: 3 })).await;
    let next = collect(&mut raw, 3).await;
    assert_eq!(sequences(&next), [6, 7, 8]);
    let between = raw.barrier(101).await;
    assert_eq!(sequences(&between), Vec::<u64>::new(), "sent beyond the credit");

    raw.send(Out::Credit(pb::CreditGrant { credits: 1000 })).await;
    let rest = collect(&mut raw, 12).await;
    assert_eq!(sequences(&rest), (9..=20).collect::<Vec<_>>());
}

/// The subscription of `server`'s only subscriber (the stream with a subscription).
async fn buffer(server: &TestServer) -> streambus::QueueSnapshot {
    let snapshot = server.snapshot().await;
    let subscription = snapshot.sessions.iter().flat_map(|s| &s.subscriptions).next();
    subscription.expect("a subscription").buffer.clone()
}

/// Publishes one message on `dev.a`, waits until the subscriber's pump holds it (it
/// waits for credit), then `dev.b`, `dev.c` and `dev.a` again, each with its topic as
/// payload, and waits until those three are in the subscription's buffer.
async fn four_waiting(server: &TestServer) {
    let mut publisher = server.raw(None).await;
    publisher.publish_acked(1, "dev.a", &["dev.a"]).await;
    wait_until("the pump took the first", || async {
        buffer(server).await.delivered == 1
    })
    .await;
    for (id, topic) in [(2, "dev.b"), (3, "dev.c"), (4, "dev.a")] {
        publisher.publish_acked(id, topic, &[topic]).await;
    }
    wait_until("three wait", || async { buffer(server).await.queued_messages == 3 }).await;
}

/// Each delivery of `frames` as (its topic, its payload), in order; and the batches.
fn topics_and_batches(frames: &[In]) -> (Vec<(String, String)>, Vec<&pb::DeliveryBatch>) {
    let batches: Vec<&pb::DeliveryBatch> = frames
        .iter()
        .filter_map(|f| match f {
            In::Deliveries(b) => Some(b),
            _ => None,
        })
        .collect();
    let deliveries = batches
        .iter()
        .flat_map(|b| {
            b.deliveries.iter().map(|d| {
                let topic = if d.topic.is_empty() { &b.topic } else { &d.topic };
                (topic.clone(), String::from_utf8(d.payload.to_vec()).unwrap())
            })
        })
        .collect();
    (deliveries, batches)
}

/// A client whose hello says `mixed_topics` gets the deliveries waiting for it, of
/// several topics, in one batch, in the order they were published; each names its
/// topic where it is not the batch's. A client that does not say it gets a batch per
/// topic, and no delivery names a topic.
#[tokio::test]
async fn waiting_deliveries_of_several_topics_share_a_batch() {
    for mixed_topics in [true, false] {
        let server = TestServer::start().await;
        let mut raw = server
            .raw_hello(pb::Hello {
                client_name: "raw".into(),
                initial_credit: Some(0),
                mixed_topics,
                ..Default::default()
            })
            .await;
        raw.subscribe(1, "dev.>", pb::OverflowPolicy::Block, 0).await;
        four_waiting(&server).await;
        raw.send(Out::Credit(pb::CreditGrant { credits: 100 })).await;
        let frames = collect(&mut raw, 4).await;
        let (deliveries, batches) = topics_and_batches(&frames);
        let expected: Vec<(String, String)> = ["dev.a", "dev.b", "dev.c", "dev.a"]
            .iter()
            .map(|t| (t.to_string(), t.to_string()))
            .collect();
        assert_eq!(deliveries, expected, "mixed_topics: {mixed_topics}");
        let sizes: Vec<usize> = batches.iter().map(|b| b.deliveries.len()).collect();
        if mixed_topics {
            // The first was in hand alone; the three that waited came together.
            assert_eq!(sizes, [1, 3]);
            let named: Vec<&str> = batches[1].deliveries.iter().map(|d| d.topic.as_str()).collect();
            assert_eq!(
                (batches[1].topic.as_str(), named),
                ("dev.b", vec!["", "dev.c", "dev.a"])
            );
        } else {
            assert_eq!(sizes, [1, 1, 1, 1]);
            assert!(batches.iter().flat_map(|b| &b.deliveries).all(|d| d.topic.is_empty()));
        }
        server.shutdown().await;
    }
}

/// In a batch of several topics, a gap keeps its place: the runs before it go in the
/// batch, the gap right after it, before anything later.
#[tokio::test]
async fn a_gap_follows_the_runs_before_it() {
    let server = TestServer::start().await;
    let mut raw = server
        .raw_hello(pb::Hello {
            client_name: "raw".into(),
            initial_credit: Some(0),
            mixed_topics: true,
            ..Default::default()
        })
        .await;
    raw.subscribe(1, "dev.>", pb::OverflowPolicy::DropNewest, 2).await;
    let mut publisher = server.raw(None).await;
    publisher.publish_acked(1, "dev.a", &["dev.a"]).await;
    wait_until("the pump took the first", || async {
        buffer(&server).await.delivered == 1
    })
    .await;
    // Two fill the buffer; the third is dropped, and its gap waits behind them.
    for (id, topic) in [(2, "dev.b"), (3, "dev.c"), (4, "dev.d")] {
        publisher.publish_acked(id, topic, &[topic]).await;
    }
    wait_until("two wait and one was dropped", || async {
        let b = buffer(&server).await;
        b.queued_messages == 2 && b.dropped == 1
    })
    .await;
    raw.send(Out::Credit(pb::CreditGrant { credits: 100 })).await;
    let mut frames = collect(&mut raw, 3).await;
    while !frames.iter().any(|f| matches!(f, In::Gap(_))) {
        frames.push(raw.next().await);
    }
    let shape: Vec<String> = frames
        .iter()
        .map(|f| match f {
            In::Deliveries(b) => {
                let topics: Vec<&str> = b
                    .deliveries
                    .iter()
                    .map(|d| {
                        if d.topic.is_empty() {
                            b.topic.as_str()
                        } else {
                            d.topic.as_str()
                        }
                    })
                    .collect();
                format!("deliveries {}", topics.join(" "))
            }
            In::Gap(g) => format!("gap {} {}", g.topic, g.dropped),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(shape, ["deliveries dev.a", "deliveries dev.b dev.c", "gap dev.d 1"]);
}

/// The SDK says `mixed_topics` and gives each delivery of a batch of several topics
/// its own topic.
#[tokio::test]
async fn the_sdk_reads_batches_of_several_topics() {
    let server = TestServer::start().await;
    let client = server.client_with_credit("mixed", 0).await;
    let mut subscription = client
        .subscribe("dev.>", streambus::SubscriptionOptions::default())
        .await
        .unwrap();
    four_waiting(&server).await;
    client.grant(100).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let batch = tokio::time::timeout(harness::PATIENCE, subscription.next_batch())
            .await
            .expect("deliveries in time")
            .expect("the subscription is live");
        for event in batch {
            match event {
                streambus::Event::Delivery(d) => got.push((
                    d.topic.as_str().to_owned(),
                    String::from_utf8(d.payload.to_vec()).unwrap(),
                )),
                other => panic!("expected deliveries, got {other:?}"),
            }
        }
    }
    let expected: Vec<(String, String)> = ["dev.a", "dev.b", "dev.c", "dev.a"]
        .iter()
        .map(|t| (t.to_string(), t.to_string()))
        .collect();
    assert_eq!(got, expected);
    server.shutdown().await;
}

/// A session that holds its credits at zero and a subscription of 4 messages, with
/// `policy`; then 10 messages published in one batch.
async fn stalled(server: &TestServer, policy: pb::OverflowPolicy) -> RawSession {
    let mut raw = server.raw(Some(0)).await;
    raw.subscribe(1, "t", policy, 4).await;
    let mut publisher = server.raw(None).await;
    publisher.publish_acked(1, "t", &PAYLOADS).await;
    raw
}

/// `drop_oldest`: the 6 oldest are dropped; the client gets a gap frame naming exactly
/// them, then the 4 newest.
#[tokio::test]
async fn drop_oldest_is_a_gap_frame() {
    let server = TestServer::start().await;
    let mut raw = stalled(&server, pb::OverflowPolicy::DropOldest).await;
    match raw.next().await {
        In::Gap(g) => {
            assert_eq!(
                (g.topic.as_str(), g.dropped, g.first_sequence, g.last_sequence),
                ("t", 6, 1, 6)
            );
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    raw.send(Out::Credit(pb::CreditGrant { credits: 100 })).await;
    assert_eq!(sequences(&collect(&mut raw, 4).await), [7, 8, 9, 10]);
}

/// `drop_newest`: the 4 oldest are kept and delivered, then a gap frame names the 6
/// newest.
#[tokio::test]
async fn drop_newest_is_a_gap_frame() {
    let server = TestServer::start().await;
    let mut raw = stalled(&server, pb::OverflowPolicy::DropNewest).await;
    raw.send(Out::Credit(pb::CreditGrant { credits: 100 })).await;
    let mut frames = collect(&mut raw, 4).await;
    while !frames.iter().any(|f| matches!(f, In::Gap(_))) {
        frames.push(raw.next().await);
    }
    assert_eq!(sequences(&frames), [1, 2, 3, 4]);
    let gap = frames.iter().find_map(|f| match f {
        In::Gap(g) => Some((g.dropped, g.first_sequence, g.last_sequence)),
        _ => None,
    });
    assert_eq!(gap, Some((6, 5, 10)));
}

/// `disconnect`: the slow subscription is ended and the client told why; the session
/// itself stays usable.
#[tokio::test]
async fn disconnect_closes_the_subscription() {
    let server = TestServer::start().await;
    let mut raw = stalled(&server, pb::OverflowPolicy::Disconnect).await;
    raw.send(Out::Credit(pb::CreditGrant { credits: 100 })).await;
    let closed = raw
        .next_matching(|f| match f {
            In::SubscriptionClosed(c) => Some(*c),
            In::Gap(g) => panic!("disconnect drops nothing silently into a gap: {g:?}"),
            _ => None,
        })
        .await;
    assert_eq!(closed.subscription_id, 1);
    assert_eq!(closed.reason, pb::CloseReason::SlowConsumer as i32);
    raw.barrier(7).await;
    wait_until("the subscription is gone", || async {
        server
            .snapshot()
            .await
            .sessions
            .iter()
            .all(|s| s.subscriptions.is_empty())
    })
    .await;
}

/// `block`: nothing is dropped; the topic waits for the client, and every message
/// arrives once credit is granted.
#[tokio::test]
async fn block_loses_nothing() {
    let server = TestServer::start().await;
    let mut raw = stalled(&server, pb::OverflowPolicy::Block).await;
    raw.send(Out::Credit(pb::CreditGrant { credits: 100 })).await;
    let frames = collect(&mut raw, 10).await;
    assert!(!frames.iter().any(|f| matches!(f, In::Gap(_))));
    assert_eq!(sequences(&frames), (1..=10).collect::<Vec<_>>());
}
