//! Backpressure through the public API: each overflow policy with exact drop counts and
//! gap events, `block` holding publishers, `try_publish` refusals, and bounded queues
//! under a stalled subscriber.

#[path = "common/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use harness::*;
use streambus_core::{
    BusError, CloseReason, ConnectOptions, Event, Gap, OverflowPolicy, SubscriptionOptions, Topic, TopicRoute,
};

fn policy(p: OverflowPolicy, messages: usize) -> SubscriptionOptions {
    SubscriptionOptions::default().overflow(p).buffer(messages, 1 << 20)
}

fn gap(first: u64, last: u64) -> Event {
    Event::Gap(Gap {
        topic: Topic::new("t").unwrap(),
        dropped: last - first + 1,
        first_sequence: first,
        last_sequence: last,
    })
}

/// Publishes `n` messages "1".."n" to topic `t` and waits until all are fanned out.
async fn publish_n(bus: &streambus_core::Bus, range: std::ops::RangeInclusive<u32>) {
    let session = bus.connect(ConnectOptions::named("publisher")).await.unwrap();
    for i in range {
        session.publish("t", i.to_string()).await.unwrap();
    }
    wait_snapshot(bus, "everything fanned out", |s| s.inflight_batches == 0).await;
}

/// drop_oldest: the oldest 15 of 25 are dropped, reported as one gap before the newest 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_reports_exact_gap() {
    let bus = bus().await;
    let mut sub = bus
        .subscribe("t", policy(OverflowPolicy::DropOldest, 10))
        .await
        .unwrap();
    publish_n(&bus, 1..=25).await;
    assert_eq!(sub.buffer().dropped, 15);
    assert_eq!(next(&mut sub).await, Some(gap(1, 15)));
    let got = payloads(&mut sub, 10).await;
    assert_eq!(got, (16..=25).map(|i| i.to_string()).collect::<Vec<_>>());
    bus.shutdown().await;
}

/// drop_newest: the first 10 are kept; the 15 refused come as a gap before the next delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_reports_exact_gap() {
    let bus = bus().await;
    let mut sub = bus
        .subscribe("t", policy(OverflowPolicy::DropNewest, 10))
        .await
        .unwrap();
    publish_n(&bus, 1..=25).await;
    assert_eq!(sub.buffer().dropped, 15);
    let got = payloads(&mut sub, 10).await;
    assert_eq!(got, (1..=10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(next(&mut sub).await, Some(gap(11, 25)));
    publish_n(&bus, 26..=26).await;
    assert_eq!(payloads(&mut sub, 1).await, ["26"]);
    bus.shutdown().await;
}

/// disconnect: what was buffered is delivered, then the subscription ends as a slow
/// consumer and its session forgets it; other subscribers are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_ends_slow_consumer() {
    let bus = bus().await;
    let session = bus.connect(ConnectOptions::named("slow")).await.unwrap();
    let mut slow = session
        .subscribe("t", policy(OverflowPolicy::Disconnect, 10))
        .await
        .unwrap();
    let mut fine = bus
        .subscribe("t", policy(OverflowPolicy::DropOldest, 100))
        .await
        .unwrap();
    publish_n(&bus, 1..=11).await;
    let events = drain(&mut slow).await;
    assert_eq!(events.len(), 11);
    assert_eq!(events.last(), Some(&Event::Closed(CloseReason::SlowConsumer)));
    assert_eq!(slow.buffer().dropped, 1);
    wait_until("session forgets the subscription", || async {
        session.snapshot().await.ok().filter(|s| s.subscriptions.is_empty())
    })
    .await;
    assert_eq!(payloads(&mut fine, 11).await.len(), 11);
    bus.shutdown().await;
}

/// block: the publisher is held back once the subscriber buffer and the topic mailbox
/// are full, and completes, losing nothing and keeping order, once the consumer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_holds_publisher_until_consumer_reads() {
    let bus = bus_with(|c| {
        c.topics.mailbox_messages = 4;
        c.topics.mailbox_bytes = 1 << 20;
        c.limits.max_message_bytes = 1 << 20;
    })
    .await;
    let mut sub = bus.subscribe("t", policy(OverflowPolicy::Block, 2)).await.unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let publisher = bus.connect(ConnectOptions::named("publisher")).await.unwrap();
    let task = tokio::spawn({
        let done = done.clone();
        async move {
            for i in 1..=20 {
                publisher.publish("t", i.to_string()).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // 2 in the subscriber buffer, 1 parked at the topic, 3 in its backlog: the mailbox
    // (4 messages) is full and the 7th publish waits for admission, which only a read
    // can free. (The admission counts a batch as soon as it is sent, the backlog once
    // the actor has taken it from its mailbox: wait for both.)
    let snap = wait_snapshot(&bus, "topic stalled with a full mailbox", |s| {
        done.load(Ordering::SeqCst) == 6
            && s.topic("t")
                .is_some_and(|t| t.stalled_subscribers == 1 && t.mailbox_messages == 4 && t.backlog_batches == 3)
    })
    .await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        6,
        "the publisher is held at the 7th message"
    );
    let t = snap.topic("t").unwrap();
    assert_eq!(t.backlog_batches, 3);
    assert_eq!(sub.buffer().queued_messages, 2);

    let got = payloads(&mut sub, 20).await;
    assert_eq!(got, (1..=20).map(|i| i.to_string()).collect::<Vec<_>>());
    task.await.unwrap();
    assert_eq!(sub.buffer().dropped, 0);
    bus.shutdown().await;
}

/// publish_now publishes only what needs no wait: a topic not started yet, a full
/// mailbox or a closed session hand the message back or refuse it, and what it did
/// publish arrives in order with what went the waiting way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_now_hands_back_what_would_wait() {
    let bus = bus_with(|c| {
        c.topics.mailbox_messages = 2;
    })
    .await;
    let s = bus.connect(ConnectOptions::default()).await.unwrap();
    // Nothing has started `t`: its start goes through the supervisor, which waits.
    let back = s
        .publish_now(msg("t", "0"))
        .unwrap()
        .expect("a topic not started waits");
    assert_eq!(&back.payload[..], b"0");
    let mut sub = bus.subscribe("t", policy(OverflowPolicy::Block, 1)).await.unwrap();
    s.publish_message(back).await.unwrap();
    wait_snapshot(&bus, "0 buffered", |s| s.inflight_batches == 0).await;
    assert!(
        s.publish_now(msg("t", "1")).unwrap().is_none(),
        "parked: holds 1 permit"
    );
    wait_snapshot(&bus, "1 parked", |s| {
        s.topic("t").is_some_and(|t| t.stalled_subscribers == 1)
    })
    .await;
    assert!(
        s.publish_now(msg("t", "2")).unwrap().is_none(),
        "backlog: the 2nd permit"
    );
    let back = s.publish_now(msg("t", "3")).unwrap().expect("a full mailbox waits");
    assert_eq!(&back.payload[..], b"3");
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { s.publish_message(back).await }
    });
    assert_eq!(payloads(&mut sub, 4).await, ["0", "1", "2", "3"]);
    waiting.await.unwrap().unwrap();
    assert!(s.publish_now(msg("t", "4")).unwrap().is_none());
    assert_eq!(payloads(&mut sub, 1).await, ["4"]);
    assert_eq!(bus.metrics().published_messages, 5);
    let back = s
        .publish_batch_now(vec![msg("t", "6"), msg("u", "7")])
        .unwrap()
        .expect("a batch of two topics goes the waiting way");
    assert_eq!(back.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(), [b"6", b"7"]);
    assert_eq!(bus.metrics().published_messages, 5);
    s.close().await.unwrap();
    assert!(matches!(s.publish_now(msg("t", "5")), Err(BusError::Closed)));
    assert_eq!(bus.metrics().published_messages, 5);
    bus.shutdown().await;
}

/// Publishes `m` at once through `route` if it can, the waiting way otherwise; says
/// which.
async fn via(s: &streambus_core::SessionHandle, route: &mut TopicRoute, m: streambus_core::Message) -> bool {
    match s.publish_now_on(m, route).unwrap() {
        None => true,
        Some(back) => {
            s.publish_message(back).await.unwrap();
            false
        }
    }
}

/// A route remembers its topic's entry and follows it: to another topic, to the
/// successor of a restarted incarnation, to nothing once the topic is reaped, to the
/// asleep entry after that and to the awake one when a subscriber wakes the topic.
/// Every message arrives on its own topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_follows_its_topic() {
    let bus = bus_with(|c| c.topics.idle_timeout_ms = 300).await;
    let s = bus.connect(ConnectOptions::default()).await.unwrap();
    let (mut t, mut u) = (
        bus.subscribe("t", policy(OverflowPolicy::Block, 64)).await.unwrap(),
        bus.subscribe("u", policy(OverflowPolicy::Block, 64)).await.unwrap(),
    );
    let mut route = TopicRoute::default();
    via(&s, &mut route, msg("t", "1")).await;
    assert!(via(&s, &mut route, msg("t", "2")).await, "t is awake");
    via(&s, &mut route, msg("u", "a")).await;
    assert!(via(&s, &mut route, msg("u", "b")).await);
    assert!(via(&s, &mut route, msg("t", "3")).await, "back to t");
    assert_eq!(payloads(&mut t, 3).await, ["1", "2", "3"]);
    assert_eq!(payloads(&mut u, 2).await, ["a", "b"]);

    // The incarnation the route holds is retired by the restart.
    bus.inject_topic_panic("t").unwrap();
    wait_snapshot(&bus, "t restarted", |s| s.topic("t").is_some_and(|t| t.restarts == 1)).await;
    assert!(via(&s, &mut route, msg("t", "4")).await, "the successor, at once");
    assert_eq!(payloads(&mut t, 1).await, ["4"]);

    // Reaped: the route's entry is gone from the directory.
    t.unsubscribe().await.unwrap();
    wait_snapshot(&bus, "t reaped", |s| s.topic("t").is_none()).await;
    assert!(!via(&s, &mut route, msg("t", "5")).await, "started anew, asleep");
    assert!(via(&s, &mut route, msg("t", "6")).await, "asleep, at once");
    // A subscriber wakes it: the asleep entry the route holds hands the message back.
    let mut woken = bus.subscribe("t", policy(OverflowPolicy::Block, 64)).await.unwrap();
    assert!(!via(&s, &mut route, msg("t", "7")).await, "the gate changed");
    assert!(via(&s, &mut route, msg("t", "8")).await, "awake, at once");
    assert_eq!(payloads(&mut woken, 2).await, ["7", "8"]);
    assert_eq!(bus.metrics().published_messages, 10);
    bus.shutdown().await;
}

/// try_publish fails at once with `Full` and hands the message back when the topic's
/// mailbox is full; it succeeds again once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_publish_hands_back_on_full() {
    let bus = bus_with(|c| {
        c.topics.mailbox_messages = 2;
    })
    .await;
    let mut sub = bus.subscribe("t", policy(OverflowPolicy::Block, 1)).await.unwrap();
    let s = bus.connect(ConnectOptions::default()).await.unwrap();
    s.try_publish(msg("t", "1")).await.unwrap(); // into the subscriber buffer
    wait_snapshot(&bus, "1 buffered", |s| s.inflight_batches == 0).await;
    s.try_publish(msg("t", "2")).await.unwrap(); // parked: holds 1 permit
    wait_snapshot(&bus, "2 parked", |s| {
        s.topic("t").is_some_and(|t| t.stalled_subscribers == 1)
    })
    .await;
    s.try_publish(msg("t", "3")).await.unwrap(); // backlog: holds the 2nd permit
    wait_snapshot(&bus, "3 in the backlog", |s| {
        s.topic("t").is_some_and(|t| t.backlog_batches == 1)
    })
    .await;
    match s.try_publish(msg("t", "4")).await {
        Err(BusError::Full(back)) => {
            assert_eq!(back.len(), 1);
            assert_eq!(&back[0].payload[..], b"4");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(BusError::Full(vec![]).code().grpc_code(), 8);
    assert_eq!(payloads(&mut sub, 3).await, ["1", "2", "3"]);
    s.try_publish(msg("t", "5")).await.unwrap();
    assert_eq!(payloads(&mut sub, 1).await, ["5"]);
    bus.shutdown().await;
}

/// A subscriber that never reads, under a fast publisher: its buffer, the topic's
/// mailbox and the publisher's in-flight work all stay within their bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_keeps_every_queue_bounded() {
    let bus = bus_with(|c| {
        c.topics.mailbox_messages = 64;
        c.topics.mailbox_bytes = 64 * 1024;
        c.limits.max_message_bytes = 1024;
    })
    .await;
    let stalled = bus
        .subscribe("load.*", SubscriptionOptions::default().buffer(100, 10_000))
        .await
        .unwrap();
    let blocked = bus
        .subscribe(
            "load.b",
            SubscriptionOptions::default()
                .overflow(OverflowPolicy::Block)
                .buffer(100, 10_000),
        )
        .await
        .unwrap();
    let publisher = bus.connect(ConnectOptions::named("fast")).await.unwrap();
    let p = publisher.clone();
    tokio::spawn(async move {
        for _ in 0..200 {
            let batch = (0..50).map(|_| msg("load.a", "x".repeat(200))).collect();
            p.publish_batch(batch).await.unwrap();
        }
    });
    let p = publisher.clone();
    let blocked_publisher = tokio::spawn(async move {
        for _ in 0..200 {
            let batch = (0..50).map(|_| msg("load.b", "y".repeat(200))).collect();
            if p.publish_batch(batch).await.is_err() {
                break;
            }
        }
    });
    let snap = wait_snapshot(&bus, "drop-policy topic done and block topic stalled", |s| {
        s.topic("load.a")
            .is_some_and(|t| t.published == 10_000 && t.mailbox_messages == 0)
            && s.topic("load.b").is_some_and(|t| t.stalled_subscribers == 1)
    })
    .await;
    for t in &snap.topics {
        assert!(t.mailbox_messages <= t.mailbox_capacity_messages, "{t:?}");
        assert!(t.mailbox_bytes <= t.mailbox_capacity_bytes, "{t:?}");
    }
    for sub in snap.sessions.iter().flat_map(|s| &s.subscriptions) {
        assert!(sub.buffer.peak_messages <= sub.buffer.capacity_messages, "{sub:?}");
        assert!(sub.buffer.queued_bytes <= sub.buffer.capacity_bytes, "{sub:?}");
    }
    let stalled_snap = stalled.buffer();
    assert_eq!(
        stalled_snap.queued_messages, 50,
        "200-byte messages: 10 000 bytes hold 50"
    );
    assert!(stalled_snap.dropped >= 10_000 - 50);
    assert_eq!(blocked.buffer().dropped, 0, "block never drops");
    assert!(!blocked_publisher.is_finished(), "the block topic holds its publisher");
    drop(blocked);
    blocked_publisher.await.unwrap();
    bus.shutdown().await;
}
