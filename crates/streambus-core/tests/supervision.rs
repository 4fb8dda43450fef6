//! Supervision and lifecycle through the public API: session and topic panics,
//! graceful close, shutdown drain, idle topic reaping.

#[path = "common/harness.rs"]
mod harness;

use harness::*;
use streambus_core::{BusError, CloseReason, ConnectOptions, Event, SubscriptionOptions};

fn opts() -> SubscriptionOptions {
    SubscriptionOptions::default()
}

/// A panic in one session ends that session only: its subscriptions close with
/// `session_failed`, its handle refuses work, and every other session keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_panic_is_isolated() {
    let bus = bus().await;
    let doomed = bus.connect(ConnectOptions::named("doomed")).await.unwrap();
    let survivor = bus.connect(ConnectOptions::named("survivor")).await.unwrap();
    let publisher = bus.connect(ConnectOptions::named("publisher")).await.unwrap();
    let mut doomed_sub = doomed.subscribe("a.>", opts()).await.unwrap();
    let mut survivor_sub = survivor.subscribe("a.>", opts()).await.unwrap();

    doomed.inject_panic();
    let snap = wait_snapshot(&bus, "the failed session is gone", |s| {
        s.session_manager.sessions == 2 && s.session_manager.sessions_failed == 1
    })
    .await;
    assert!(snap.sessions.iter().all(|s| s.name != "doomed"));
    assert_eq!(
        drain(&mut doomed_sub).await,
        [Event::Closed(CloseReason::SessionFailed)]
    );
    assert!(matches!(doomed.publish("a.b", "x").await, Err(BusError::Closed)));
    assert!(matches!(doomed.subscribe("a", opts()).await, Err(BusError::Closed)));

    publisher.publish("a.b", "still here").await.unwrap();
    assert_eq!(payloads(&mut survivor_sub, 1).await, ["still here"]);
    let snap = bus.snapshot().await.unwrap();
    assert_eq!(
        snap.topic_supervisor.subscriptions, 1,
        "the failed session's subscription left the index"
    );
    bus.shutdown().await;
}

/// A topic actor that panics is restarted with its subscribers and its sequence
/// counter, and delivery continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_panic_restarts_and_delivery_continues() {
    let bus = bus().await;
    let mut exact = bus.subscribe("t.x", opts()).await.unwrap();
    let mut wild = bus.subscribe("t.*", opts()).await.unwrap();
    let publisher = bus.connect(ConnectOptions::named("publisher")).await.unwrap();
    for i in 1..=5 {
        publisher.publish("t.x", i.to_string()).await.unwrap();
    }
    assert_eq!(payloads(&mut exact, 5).await.len(), 5);
    assert_eq!(payloads(&mut wild, 5).await.len(), 5);
    assert!(
        !bus.topic("t.x").await.unwrap().unwrap().actor,
        "no actor until one is needed"
    );

    // The actor is started for the crash, and its failure restarts the topic.
    bus.inject_topic_panic("t.x").unwrap();
    let snap = wait_snapshot(&bus, "topic restarted", |s| {
        s.topic("t.x").is_some_and(|t| t.restarts == 1)
    })
    .await;
    assert_eq!(snap.topic_supervisor.topic_restarts, 1);
    assert_eq!(
        snap.topic("t.x").unwrap().subscribers,
        2,
        "subscribers rebuilt from the index"
    );
    assert!(
        !snap.topic("t.x").unwrap().actor,
        "the new incarnation has no actor yet"
    );

    for i in 6..=10 {
        publisher.publish("t.x", i.to_string()).await.unwrap();
    }
    for sub in [&mut exact, &mut wild] {
        for expected in 6..=10u64 {
            match next(sub).await {
                Some(Event::Delivery(d)) => assert_eq!(d.sequence, expected),
                other => panic!("expected delivery {expected}, got {other:?}"),
            }
        }
    }
    bus.shutdown().await;
}

/// A fan-out that panics in the publisher's own task (the topic's hot path) restarts
/// the topic like an actor panic: the publisher's batch is lost in that failure and
/// reported to the subscriber as a gap with numbers of its own, the publisher is not
/// hurt, and delivery goes on with the numbering after the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_panic_in_a_publisher_restarts_the_topic_and_reports_the_loss() {
    let bus = bus().await;
    let mut sub = bus.subscribe("t.f", opts()).await.unwrap();
    let publisher = bus.connect(ConnectOptions::named("publisher")).await.unwrap();
    for i in 1..=3 {
        publisher.publish("t.f", i.to_string()).await.unwrap();
    }
    assert_eq!(payloads(&mut sub, 3).await, ["1", "2", "3"]);

    bus.inject_fan_out_panic("t.f").unwrap();
    publisher.publish("t.f", "lost").await.unwrap();
    let snap = wait_snapshot(&bus, "topic restarted", |s| {
        s.topic("t.f").is_some_and(|t| t.restarts == 1)
    })
    .await;
    assert_eq!(snap.topic("t.f").unwrap().lost_in_crashes, 1);
    for i in 5..=6 {
        publisher.publish("t.f", i.to_string()).await.unwrap();
    }
    match next(&mut sub).await {
        Some(Event::Gap(gap)) => {
            assert_eq!((gap.dropped, gap.first_sequence, gap.last_sequence), (1, 4, 4));
        }
        other => panic!("expected the gap, got {other:?}"),
    }
    for expected in 5..=6u64 {
        match next(&mut sub).await {
            Some(Event::Delivery(d)) => {
                assert_eq!(d.sequence, expected);
                assert_eq!(&d.payload[..], expected.to_string().as_bytes());
            }
            other => panic!("expected delivery {expected}, got {other:?}"),
        }
    }
    assert!(publisher.is_open(), "the publisher's session carries on");
    bus.shutdown().await;
}

/// Closing a publishing session first delivers everything it published; closing a
/// subscribing session lets its subscriber read what was buffered, then ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_delivers_everything_queued() {
    let bus = bus().await;
    let reader = bus.connect(ConnectOptions::named("reader")).await.unwrap();
    let mut sub = reader.subscribe("g", opts().buffer(10_000, 1 << 24)).await.unwrap();
    let writer = bus.connect(ConnectOptions::named("writer")).await.unwrap();
    for i in 0..100 {
        let batch = (0..10).map(|j| msg("g", (i * 10 + j).to_string())).collect();
        writer.publish_batch(batch).await.unwrap();
    }
    writer.close().await.unwrap();
    assert!(matches!(writer.publish("g", "late").await, Err(BusError::Closed)));
    assert_eq!(
        sub.buffer().queued_messages,
        1000,
        "all of the writer's messages are buffered after its close"
    );

    reader.close().await.unwrap();
    let events = drain(&mut sub).await;
    assert_eq!(events.len(), 1001);
    assert_eq!(events.last(), Some(&Event::Closed(CloseReason::SessionClosed)));
    wait_snapshot(&bus, "both sessions gone", |s| s.sessions.is_empty()).await;
    bus.shutdown().await;
}

/// Shutdown drains: every admitted message reaches the buffers, subscribers read them
/// all, then see `Closed(Shutdown)`; afterwards the bus refuses work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains() {
    let bus = bus().await;
    let mut sub = bus.subscribe("s.>", opts().buffer(10_000, 1 << 24)).await.unwrap();
    let publisher = bus.connect(ConnectOptions::named("publisher")).await.unwrap();
    for i in 0..500 {
        publisher.publish(&format!("s.{}", i % 7), i.to_string()).await.unwrap();
    }
    bus.shutdown().await;
    let events = drain(&mut sub).await;
    assert_eq!(events.len(), 501);
    assert_eq!(events.last(), Some(&Event::Closed(CloseReason::Shutdown)));
    assert!(matches!(publisher.publish("s.1", "late").await, Err(BusError::Closed)));
    assert!(matches!(
        bus.connect(ConnectOptions::default()).await,
        Err(BusError::Closed)
    ));
}

/// Shutdown with a `block` subscriber that never reads is bounded by the drain
/// timeout, and the messages it could not deliver are counted, not silently lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_stalled_block_subscriber_is_bounded() {
    let bus = bus_with(|c| c.shutdown.drain_timeout_ms = 200).await;
    let stalled = bus
        .subscribe(
            "b",
            opts()
                .overflow(streambus_core::OverflowPolicy::Block)
                .buffer(1, 1 << 20),
        )
        .await
        .unwrap();
    let publisher = bus.connect(ConnectOptions::named("publisher")).await.unwrap();
    for i in 0..3 {
        publisher.publish("b", i.to_string()).await.unwrap();
    }
    wait_snapshot(&bus, "stalled", |s| {
        s.topic("b").is_some_and(|t| t.stalled_subscribers == 1)
    })
    .await;
    bus.shutdown().await;
    let buffer = stalled.buffer();
    assert_eq!(buffer.queued_messages, 1);
    assert_eq!(buffer.dropped, 1, "the parked message is counted as dropped");
    assert_eq!(buffer.closed, Some(CloseReason::Shutdown));
}

/// An idle topic with no subscriber is reaped, and a later publish starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topics_are_reaped_and_restarted() {
    let bus = bus_with(|c| c.topics.idle_timeout_ms = 40).await;
    let publisher = bus.connect(ConnectOptions::named("publisher")).await.unwrap();
    publisher.publish("idle.t", "1").await.unwrap();
    // (Under heavy load a topic can even be reaped between its start and the first
    // publish's admission; the publish is then re-routed to a fresh actor. Hence `>=`.)
    let snap = wait_snapshot(&bus, "reaped", |s| {
        s.topic("idle.t").is_none() && s.topic_supervisor.topics_reaped >= 1
    })
    .await;
    let reaped = snap.topic_supervisor.topics_reaped;

    let mut sub = bus.subscribe("idle.t", opts()).await.unwrap();
    publisher.publish("idle.t", "2").await.unwrap();
    assert_eq!(payloads(&mut sub, 1).await, ["2"]);
    // A topic with a subscriber is never reaped, however idle: by the time a later,
    // unsubscribed topic has been reaped, `idle.t` has been idle longer and is still there.
    publisher.publish("idle.other", "x").await.unwrap();
    let snap = wait_snapshot(&bus, "other reaped", |s| {
        s.topic_supervisor.topics_reaped > reaped && s.topic("idle.other").is_none()
    })
    .await;
    assert!(snap.topic("idle.t").is_some());
    bus.shutdown().await;
}

/// Unsubscribing stops deliveries and removes the subscription everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_removes_everywhere() {
    let bus = bus().await;
    let session = bus.connect(ConnectOptions::default()).await.unwrap();
    let sub = session.subscribe("u.*", opts()).await.unwrap();
    session.publish("u.a", "x").await.unwrap();
    sub.unsubscribe().await.unwrap();
    let snap = bus.snapshot().await.unwrap();
    assert_eq!(snap.topic_supervisor.subscriptions, 0);
    assert!(snap.sessions.iter().all(|s| s.subscriptions.is_empty()));
    let dropped = session.subscribe("u.*", opts()).await.unwrap();
    drop(dropped);
    wait_snapshot(&bus, "dropped subscription removed", |s| {
        s.topic_supervisor.subscriptions == 0
    })
    .await;
    bus.shutdown().await;
}

/// The default session behind `Bus::publish` / `Bus::subscribe` is replaced after a
/// failure, so the shorthands keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_session_recovers_from_failure() {
    let bus = bus().await;
    let mut sub = bus.subscribe("d", opts()).await.unwrap();
    bus.default_session().await.unwrap().inject_panic();
    wait_snapshot(&bus, "default session failed", |s| {
        s.session_manager.sessions_failed == 1
    })
    .await;
    assert_eq!(drain(&mut sub).await, [Event::Closed(CloseReason::SessionFailed)]);

    let mut sub = bus.subscribe("d", opts()).await.unwrap();
    bus.publish("d", "again").await.unwrap();
    assert_eq!(payloads(&mut sub, 1).await, ["again"]);
    bus.shutdown().await;
}
