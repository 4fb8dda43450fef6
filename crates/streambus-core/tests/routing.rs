//! Routing through the public API: fan-out, wildcards, queue groups, retained
//! messages, per-publisher order, and typed errors for bad input.

#[path = "common/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use harness::*;
use streambus_core::{BusError, ConnectOptions, Event, SubscriptionOptions};
use streambus_types::TopicError;

fn opts() -> SubscriptionOptions {
    SubscriptionOptions::default()
}

/// A message reaches every matching subscriber (exact, `*`, `>`) and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_and_wildcard_fan_out() {
    let bus = bus().await;
    let mut exact = bus.subscribe("sensors.d1.temp", opts()).await.unwrap();
    let mut star = bus.subscribe("sensors.*.temp", opts()).await.unwrap();
    let mut tail = bus.subscribe("sensors.>", opts()).await.unwrap();
    let mut other = bus.subscribe("sensors.*.humidity", opts()).await.unwrap();

    let publisher = bus.connect(ConnectOptions::named("pub")).await.unwrap();
    publisher.publish("sensors.d1.temp", "a").await.unwrap();
    publisher.publish("sensors.d2.temp", "b").await.unwrap();
    publisher.publish("sensors.d1.humidity", "c").await.unwrap();

    // Order is kept per topic only: different topics are different actors.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(payloads(&mut exact, 1).await, ["a"]);
    assert_eq!(sorted(payloads(&mut star, 2).await), ["a", "b"]);
    assert_eq!(sorted(payloads(&mut tail, 3).await), ["a", "b", "c"]);
    assert_eq!(payloads(&mut other, 1).await, ["c"]);
    let snap = bus.snapshot().await.unwrap();
    for sub in snap.sessions.iter().flat_map(|s| &s.subscriptions) {
        assert_eq!(sub.buffer.queued_messages, 0, "{} got more than it should", sub.filter);
    }
    bus.shutdown().await;
}

/// Each message goes to exactly one member of a queue group, spread across members,
/// while a plain subscriber still gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_delivers_each_message_once() {
    let bus = bus().await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(bus.subscribe("jobs.*", opts().queue_group("workers")).await.unwrap());
    }
    let mut plain = bus.subscribe("jobs.*", opts()).await.unwrap();
    let publisher = bus.connect(ConnectOptions::default()).await.unwrap();
    for i in 0..300 {
        publisher
            .publish(if i % 2 == 0 { "jobs.a" } else { "jobs.b" }, i.to_string())
            .await
            .unwrap();
    }
    assert_eq!(payloads(&mut plain, 300).await.len(), 300);
    wait_snapshot(&bus, "all fanned out", |s| s.inflight_batches == 0).await;

    let mut seen = Vec::new();
    for member in &mut members {
        let queued = member.buffer().queued_messages;
        assert!(queued > 0, "round robin gives every member a share");
        seen.extend(payloads(member, queued).await);
    }
    let unique: BTreeSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), 300, "no message delivered twice");
    assert_eq!(unique.len(), 300, "no message lost");
    bus.shutdown().await;
}

/// A new subscriber first gets the topic's last retained message, flagged as such;
/// an empty retained publish clears it; queue-group members get no retained replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_goes_first_to_new_subscribers() {
    let bus = bus().await;
    bus.publish_message(msg("cfg.rate", "1").retained()).await.unwrap();
    bus.publish_message(msg("cfg.rate", "2").retained()).await.unwrap();
    bus.publish("cfg.rate", "not retained").await.unwrap();

    for filter in ["cfg.rate", "cfg.*"] {
        let mut sub = bus.subscribe(filter, opts()).await.unwrap();
        match next(&mut sub).await {
            Some(Event::Delivery(d)) => {
                assert_eq!(&d.payload[..], b"2");
                assert!(d.retained);
                assert_eq!(d.sequence, 2);
            }
            other => panic!("expected the retained value, got {other:?}"),
        }
        bus.publish("cfg.rate", "live").await.unwrap();
        assert_eq!(payloads(&mut sub, 1).await, ["live"]);
    }

    let mut member = bus.subscribe("cfg.rate", opts().queue_group("g")).await.unwrap();
    bus.publish_message(msg("cfg.rate", "").retained()).await.unwrap();
    assert_eq!(
        payloads(&mut member, 1).await,
        [""],
        "the clearing publish itself is delivered"
    );
    let mut late = bus.subscribe("cfg.rate", opts()).await.unwrap();
    bus.publish("cfg.rate", "after clear").await.unwrap();
    assert_eq!(
        payloads(&mut late, 1).await,
        ["after clear"],
        "no retained value after clearing"
    );
    bus.shutdown().await;
}

/// Concurrent publishers to one topic: each publisher's messages arrive in its order,
/// and sequence numbers are dense and increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_per_publisher() {
    let bus = bus().await;
    let mut sub = bus.subscribe("orders", opts().buffer(10_000, 1 << 24)).await.unwrap();
    let mut tasks = Vec::new();
    for p in 0..4 {
        let session = bus.connect(ConnectOptions::named(format!("p{p}"))).await.unwrap();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let batch = (0..4).map(|j| msg("orders", format!("{p}:{}", i * 4 + j))).collect();
                session.publish_batch(batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last: BTreeMap<u32, i64> = BTreeMap::new();
    for expected_seq in 1..=8000 {
        let Some(Event::Delivery(d)) = next(&mut sub).await else {
            panic!("expected a delivery")
        };
        assert_eq!(d.sequence, expected_seq);
        let text = String::from_utf8(d.payload.to_vec()).unwrap();
        let (p, i) = text.split_once(':').unwrap();
        let (p, i): (u32, i64) = (p.parse().unwrap(), i.parse().unwrap());
        let prev = last.insert(p, i).unwrap_or(-1);
        assert_eq!(i, prev + 1, "publisher {p} out of order");
    }
    bus.shutdown().await;
}

/// Many publishers racing for one topic while a small `block` subscriber keeps
/// stalling it, snapshots keep reading it and the supervisor's sweep (every 10 ms
/// here) keeps stopping its actor whenever it looks idle: batches that find the topic
/// busy or stalled wait their turn, and every message arrives once, with dense
/// sequence numbers and each publisher's order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_under_contention_and_stalls() {
    let bus = bus_with(|c| c.topics.idle_timeout_ms = 40).await;
    for round in 0..5 {
        let topic = format!("contended.{round}");
        contend(&bus, &topic).await;
    }
    bus.shutdown().await;
}

/// One round of [`order_is_kept_under_contention_and_stalls`] on `topic`.
async fn contend(bus: &streambus_core::Bus, topic: &str) {
    const PUBLISHERS: u32 = 8;
    const BATCHES: i64 = 300;
    let mut sub = bus
        .subscribe(
            topic,
            opts()
                .overflow(streambus_core::OverflowPolicy::Block)
                .buffer(16, 1 << 20),
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let session = bus.connect(ConnectOptions::named(format!("p{p}"))).await.unwrap();
        let topic = topic.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..BATCHES {
                let size = 1 + (i % 3);
                let batch = (0..size).map(|j| msg(&topic, format!("{p}:{}", i * 3 + j))).collect();
                session.publish_batch(batch).await.unwrap();
            }
            session.close().await.unwrap();
        }));
    }
    let observer = {
        let (bus, topic) = (bus.clone(), topic.to_owned());
        tokio::spawn(async move {
            loop {
                let _ = bus.topic(&topic).await;
                tokio::task::yield_now().await;
            }
        })
    };
    let total: u64 = (0..BATCHES).map(|i| 1 + (i % 3) as u64).sum::<u64>() * u64::from(PUBLISHERS);
    let mut last: BTreeMap<u32, i64> = BTreeMap::new();
    for expected_seq in 1..=total {
        if expected_seq % 97 == 0 {
            tokio::task::yield_now().await;
        }
        let Some(Event::Delivery(d)) = next(&mut sub).await else {
            panic!("expected a delivery")
        };
        assert_eq!(d.sequence, expected_seq, "{topic}");
        let text = String::from_utf8(d.payload.to_vec()).unwrap();
        let (p, i) = text.split_once(':').unwrap();
        let (p, i): (u32, i64) = (p.parse().unwrap(), i.parse().unwrap());
        if let Some(prev) = last.insert(p, i) {
            assert!(i > prev, "{topic}: publisher {p} out of order: {i} after {prev}");
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    observer.abort();
    let snapshot = bus.topic(topic).await.unwrap().unwrap();
    assert_eq!(snapshot.published, total);
    assert_eq!((snapshot.mailbox_messages, snapshot.backlog_batches), (0, 0));
}

/// An awake topic runs without an actor of its own while its publishers fan out for it;
/// a `block` subscriber that stops taking messages stalls the topic, and when it reads
/// again its room resumes the topic in the reader's own task: everything arrives once
/// and in order, and no actor ever starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_topic_resumes_from_its_subscribers_room() {
    let bus = bus().await;
    let mut sub = bus
        .subscribe(
            "lazy.t",
            opts()
                .overflow(streambus_core::OverflowPolicy::Block)
                .buffer(4, 1 << 20),
        )
        .await
        .unwrap();
    let session = bus.connect(ConnectOptions::named("pub")).await.unwrap();
    for i in 1..=3 {
        session.publish("lazy.t", i.to_string()).await.unwrap();
    }
    let topic = bus.topic("lazy.t").await.unwrap().expect("live");
    assert!(!topic.asleep && !topic.actor, "fanned out by its publisher: {topic:?}");
    assert_eq!(bus.counters().await.unwrap().topic_supervisor.topic_actors, 0);

    let publisher = tokio::spawn(async move {
        for i in 4..=40 {
            session.publish("lazy.t", i.to_string()).await.unwrap();
        }
    });
    // Stalled, the topic waits with no task of its own: the backlog holds its permits.
    let snap = wait_snapshot(&bus, "the subscriber stalls the topic", |s| {
        s.topic("lazy.t")
            .is_some_and(|t| t.stalled_subscribers == 1 && t.backlog_batches > 0)
    })
    .await;
    assert!(!snap.topic("lazy.t").unwrap().actor);
    for expected in 1..=40u64 {
        match next(&mut sub).await {
            Some(Event::Delivery(d)) => {
                assert_eq!(
                    (d.sequence, &d.payload[..]),
                    (expected, expected.to_string().as_bytes())
                );
            }
            other => panic!("expected delivery {expected}, got {other:?}"),
        }
    }
    publisher.await.unwrap();
    let topic = bus.topic("lazy.t").await.unwrap().expect("live");
    assert_eq!(
        (
            topic.mailbox_messages,
            topic.backlog_batches,
            topic.stalled_subscribers,
            topic.actor
        ),
        (0, 0, 0, false)
    );
    let counters = bus.counters().await.unwrap().topic_supervisor;
    assert_eq!(
        (counters.topic_actors, counters.topic_actors_started),
        (0, 0),
        "the stalls were resumed by the subscriber's room alone"
    );
    bus.shutdown().await;
}

/// More queued behind a stall than one round of a resume takes: the subscriber's room
/// resumes one round and the topic's actor, started for the rest, fans it out; all of
/// it arrives once and in order. Idle for a whole sweep period, the actor stops, and
/// the topic stays awake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_behind_a_stall_starts_the_topics_actor() {
    const BUFFER: u64 = 256;
    const TOTAL: u64 = BUFFER + 200;
    let bus = bus_with(|c| c.topics.idle_timeout_ms = 400).await;
    let mut sub = bus
        .subscribe(
            "lazy.t",
            opts()
                .overflow(streambus_core::OverflowPolicy::Block)
                .buffer(BUFFER as usize, 1 << 20),
        )
        .await
        .unwrap();
    let session = bus.connect(ConnectOptions::named("pub")).await.unwrap();
    // One message per batch, each admitted at once: the buffer fills, then about 200
    // batches wait behind the stall (far more than one round of 64).
    for i in 1..=TOTAL {
        session.publish("lazy.t", i.to_string()).await.unwrap();
    }
    let topic = bus.topic("lazy.t").await.unwrap().expect("live");
    assert!(
        topic.stalled_subscribers == 1 && topic.backlog_batches > 150,
        "{topic:?}"
    );
    assert!(!topic.actor);
    for expected in 1..=TOTAL {
        match next(&mut sub).await {
            Some(Event::Delivery(d)) => assert_eq!(d.sequence, expected),
            other => panic!("expected delivery {expected}, got {other:?}"),
        }
    }
    assert!(bus.counters().await.unwrap().topic_supervisor.topic_actors_started >= 1);
    wait_snapshot(&bus, "the idle actor stopped", |s| {
        s.topic_supervisor.topic_actors == 0 && s.topic("lazy.t").is_some_and(|t| !t.actor && !t.asleep)
    })
    .await;
    let topic = bus.topic("lazy.t").await.unwrap().expect("live");
    assert_eq!(
        (topic.mailbox_messages, topic.backlog_batches, topic.restarts),
        (0, 0, 0)
    );
    bus.shutdown().await;
}

/// `$` system topics are only matched by filters that name them explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_topics_need_explicit_filters() {
    let bus = bus().await;
    let mut all = bus.subscribe(">", opts()).await.unwrap();
    let mut dlq = bus.subscribe("$dlq.>", opts()).await.unwrap();
    bus.publish("$dlq.pg", "dead").await.unwrap();
    bus.publish("app", "live").await.unwrap();
    assert_eq!(payloads(&mut dlq, 1).await, ["dead"]);
    assert_eq!(payloads(&mut all, 1).await, ["live"]);
    bus.shutdown().await;
}

/// Every class of bad input gets its typed error and changes nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors() {
    let bus = bus_with(|c| {
        c.limits.max_message_bytes = 100;
        c.limits.max_batch_messages = 3;
        c.limits.max_subscriptions_per_session = 2;
        c.limits.max_sessions = 3;
    })
    .await;
    let s = bus.connect(ConnectOptions::default()).await.unwrap();
    assert!(matches!(
        s.publish("a.*", "x").await,
        Err(BusError::InvalidTopic(TopicError::WildcardInTopic))
    ));
    assert!(matches!(
        s.publish("a..b", "x").await,
        Err(BusError::InvalidTopic(TopicError::EmptyToken { .. }))
    ));
    assert!(matches!(
        s.publish("", "x").await,
        Err(BusError::InvalidTopic(TopicError::Empty))
    ));
    assert!(matches!(
        s.subscribe("a.>.b", opts()).await,
        Err(BusError::InvalidTopic(TopicError::TailNotLast))
    ));
    assert!(matches!(
        s.publish("a", vec![b'x'; 101]).await,
        Err(BusError::MessageTooLarge { size: 101, max: 100 })
    ));
    let batch = (0..4).map(|i| msg("a", i.to_string())).collect();
    assert!(matches!(
        s.publish_batch(batch).await,
        Err(BusError::BatchTooLarge { len: 4, max: 3 })
    ));
    assert!(matches!(
        s.subscribe("x", opts().queue_group("")).await,
        Err(BusError::InvalidOption(_))
    ));
    assert!(matches!(
        s.subscribe("x", opts().buffer(0, 10)).await,
        Err(BusError::InvalidOption(_))
    ));

    let mut ok = s.subscribe("a", opts()).await.unwrap();
    let _second = s.subscribe("b", opts()).await.unwrap();
    assert!(matches!(
        s.subscribe("c", opts()).await,
        Err(BusError::TooManySubscriptions { max: 2 })
    ));

    let _s2 = bus.connect(ConnectOptions::default()).await.unwrap();
    let _s3 = bus.connect(ConnectOptions::default()).await.unwrap();
    assert!(matches!(
        bus.connect(ConnectOptions::default()).await,
        Err(BusError::TooManySessions { max: 3 })
    ));

    // The session still works after all of that.
    s.publish("a", "fine").await.unwrap();
    assert_eq!(payloads(&mut ok, 1).await, ["fine"]);
    bus.shutdown().await;
}

/// Publish times are unique and increasing within a topic, also inside one batch and
/// across batches published faster than the clock ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_times_are_unique_and_increasing_per_topic() {
    let bus = bus().await;
    let mut sub = bus.subscribe("clock.t", opts()).await.unwrap();
    let session = bus.connect(ConnectOptions::named("pub")).await.unwrap();
    for batch in 0..5 {
        let messages = (0..200)
            .map(|i| {
                streambus_core::Message::new(streambus_core::Topic::new("clock.t").unwrap(), format!("{batch}-{i}"))
            })
            .collect();
        session.publish_batch(messages).await.unwrap();
    }
    let mut last = 0;
    for _ in 0..1000 {
        let Some(Event::Delivery(d)) = next(&mut sub).await else {
            panic!("a delivery")
        };
        assert!(d.timestamp_ns > last, "{} after {last}", d.timestamp_ns);
        last = d.timestamp_ns;
    }
    bus.shutdown().await;
}

/// A topic nothing subscribes to sleeps (no actor) but keeps its sequence, counters and
/// retained value; the first matching subscription wakes it, and numbering goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_nobody_subscribes_to_sleep_and_wake_on_subscription() {
    let bus = bus().await;
    for i in 1..=5 {
        let m = msg("idle.a", format!("m{i}"));
        bus.publish_message(if i == 3 { m.retained() } else { m })
            .await
            .unwrap();
    }
    let snap = bus.snapshot().await.unwrap();
    assert_eq!(snap.topic_supervisor.topics, 1);
    assert_eq!(snap.topic_supervisor.topics_asleep, 1);
    let counted = bus.counters().await.unwrap().topic_supervisor;
    assert_eq!(
        (counted.topics, counted.topics_asleep),
        (1, 1),
        "a scrape counts them too"
    );
    let topic = bus.topic("idle.a").await.unwrap().expect("the topic is live");
    assert!(topic.asleep);
    assert_eq!((topic.published, topic.next_sequence), (5, 6));
    assert!(topic.retained);

    let mut sub = bus.subscribe("idle.*", opts()).await.unwrap();
    let topic = bus.topic("idle.a").await.unwrap().expect("the topic is live");
    assert!(
        !topic.asleep,
        "a matching subscription wakes the topic before it is acknowledged"
    );
    assert_eq!(topic.subscribers, 1);
    match next(&mut sub).await {
        Some(Event::Delivery(d)) => {
            assert!(d.retained);
            assert_eq!((&d.payload[..], d.sequence), (&b"m3"[..], 3));
        }
        other => panic!("expected the retained value kept asleep, got {other:?}"),
    }
    bus.publish("idle.a", "live").await.unwrap();
    match next(&mut sub).await {
        Some(Event::Delivery(d)) => assert_eq!((&d.payload[..], d.sequence), (&b"live"[..], 6)),
        other => panic!("expected the live message, got {other:?}"),
    }
    assert_eq!(bus.snapshot().await.unwrap().topic_supervisor.topics_asleep, 0);
    bus.shutdown().await;
}

/// Publishers stamping a topic asleep race a subscription that wakes it: whatever the
/// interleaving, the subscriber's sequence numbers run without a hole from its first
/// delivery to the last message published, so nothing stamped after the subscription
/// went to no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_woken_under_publishers_loses_nothing_after_the_subscription() {
    let bus = bus().await;
    for round in 0..20 {
        let topic = format!("race.t{round}");
        // Each publisher goes on for 100 messages after the subscription is acknowledged.
        let subscribed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for p in 0..2 {
            let session = bus
                .connect(ConnectOptions::named(format!("p{round}.{p}")))
                .await
                .unwrap();
            let (topic, subscribed) = (topic.clone(), subscribed.clone());
            tasks.push(tokio::spawn(async move {
                let mut after = 0;
                for i in 0.. {
                    session.publish(&topic, format!("{p}:{i}")).await.unwrap();
                    if subscribed.load(Ordering::Acquire) {
                        after += 1;
                        if after == 100 {
                            break;
                        }
                    }
                }
            }));
        }
        // Let the publishers get going, then subscribe in the middle of their stream.
        wait_until("the publishers started", || async {
            let t = bus.topic(&topic).await.ok().flatten()?;
            (t.published > 20).then_some(())
        })
        .await;
        let mut sub = bus.subscribe(&topic, opts().buffer(100_000, 1 << 26)).await.unwrap();
        subscribed.store(true, Ordering::Release);
        for t in tasks {
            t.await.unwrap();
        }
        let total = bus.topic(&topic).await.unwrap().expect("live").next_sequence - 1;
        let mut expected = None;
        loop {
            let Some(Event::Delivery(d)) = next(&mut sub).await else {
                panic!("expected a delivery")
            };
            if let Some(e) = expected {
                assert_eq!(
                    d.sequence, e,
                    "round {round}: a hole in the sequence after the subscription"
                );
            }
            if d.sequence == total {
                break;
            }
            expected = Some(d.sequence + 1);
        }
        sub.unsubscribe().await.unwrap();
    }
    bus.shutdown().await;
}

/// An awake topic whose last subscriber left goes back to sleep at the supervisor's
/// sweep, whether its publisher goes on or it holds a retained value; its sequence and
/// retained value carry on asleep, and a new subscription wakes it again. An idle topic
/// with nothing retained is reaped instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_whose_subscribers_left_goes_back_to_sleep() {
    let bus = bus_with(|c| c.topics.idle_timeout_ms = 400).await;
    let first = bus.subscribe("sleepy.*", opts()).await.unwrap();
    bus.publish_message(msg("sleepy.kept", "value").retained())
        .await
        .unwrap();
    bus.publish("sleepy.gone", "once").await.unwrap();
    // `sleepy.busy` is published every 20 ms, so it never idles.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (session, stop) = (bus.connect(ConnectOptions::named("busy")).await.unwrap(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                session.publish("sleepy.busy", "tick").await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };
    wait_snapshot(&bus, "every topic awake", |s| {
        s.topics.len() == 3 && s.topics.iter().all(|t| !t.asleep)
    })
    .await;
    first.unsubscribe().await.unwrap();

    let snap = wait_snapshot(&bus, "busy and kept asleep, gone reaped", |s| {
        let names: Vec<(&str, bool)> = s.topics.iter().map(|t| (t.topic.as_str(), t.asleep)).collect();
        names == [("sleepy.busy", true), ("sleepy.kept", true)]
    })
    .await;
    assert!(snap.topic_supervisor.topics_put_to_sleep >= 2);
    assert!(snap.topic_supervisor.topics_reaped >= 1);

    let mut again = bus.subscribe("sleepy.*", opts()).await.unwrap();
    stop.store(true, Ordering::Release);
    busy.await.unwrap();
    bus.publish("sleepy.busy", "last").await.unwrap();
    let busy_last = bus.topic("sleepy.busy").await.unwrap().expect("live").next_sequence - 1;
    let mut previous = None;
    let mut kept = false;
    loop {
        let Some(Event::Delivery(d)) = next(&mut again).await else {
            panic!("expected a delivery")
        };
        if d.topic.as_str() == "sleepy.kept" {
            assert!(d.retained && &d.payload[..] == b"value" && d.sequence == 1, "{d:?}");
            kept = true;
            continue;
        }
        if let Some(p) = previous {
            assert_eq!(d.sequence, p + 1, "the woken topic's numbers run on");
        }
        previous = Some(d.sequence);
        if d.sequence == busy_last && kept {
            break;
        }
    }
    bus.shutdown().await;
}
