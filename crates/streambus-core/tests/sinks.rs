//! The generic sink runtime through the public API, with the failure-mode test sinks:
//! batching, isolation between sinks, retries, poison records to the dead-letter topic,
//! restarts after panics and fatal errors, quarantine, and the durable buffer with
//! durable acks and replay across a restart of the bus.

#[path = "common/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use harness::*;
use streambus_core::sink::testsuite::{
    BlockingSink, CollectingSink, Collector, FailingSink, PANIC, POISON, PanickingSink,
};
use streambus_core::sink::{Sink, SinkRegistry};
use streambus_core::{Bus, BusConfig, BusError, Event, Message, SinkStatus, SubscriptionOptions, Topic};
use streambus_types::SinkConfig;
use streambus_types::config::{BufferKind, FsyncPolicy, WhenFull};

/// A registry with the test sink types, all sharing `c`.
fn registry(c: &Arc<Collector>) -> SinkRegistry {
    let mut r = SinkRegistry::with_builtins();
    let (a, b, d, e) = (c.clone(), c.clone(), c.clone(), c.clone());
    r.register("collect", move |_| {
        Ok(Box::new(CollectingSink(a.clone())) as Box<dyn Sink>)
    });
    r.register("fail", move |_| Ok(Box::new(FailingSink(b.clone())) as Box<dyn Sink>));
    r.register(
        "panic",
        move |_| Ok(Box::new(PanickingSink(d.clone())) as Box<dyn Sink>),
    );
    r.register("block", move |_| Ok(Box::new(BlockingSink(e.clone())) as Box<dyn Sink>));
    r
}

/// `registry` plus a collecting type `healthy` storing into `healthy`.
fn with_healthy(mut registry: SinkRegistry, healthy: &Arc<Collector>) -> SinkRegistry {
    let h = healthy.clone();
    registry.register("healthy", move |_| {
        Ok(Box::new(CollectingSink(h.clone())) as Box<dyn Sink>)
    });
    registry
}

fn sink(name: &str, kind: &str, topics: &[&str]) -> SinkConfig {
    let mut s = SinkConfig::new(name, kind, topics);
    s.batch.max_delay_ms = 5;
    s.retry.initial_backoff_ms = 5;
    s.retry.max_backoff_ms = 20;
    s.restart.initial_backoff_ms = 5;
    s.restart.max_backoff_ms = 20;
    s
}

async fn start(sinks: Vec<SinkConfig>, c: &Arc<Collector>) -> Bus {
    let config = BusConfig {
        sinks,
        ..BusConfig::default()
    };
    Bus::start_with_sinks(config, registry(c)).await.unwrap()
}

async fn publish(bus: &Bus, topic: &str, payloads: impl IntoIterator<Item = Vec<u8>>) {
    let messages: Vec<Message> = payloads
        .into_iter()
        .map(|p| Message::new(Topic::new(topic).unwrap(), p))
        .collect();
    for chunk in messages.chunks(1000) {
        bus.default_session()
            .await
            .unwrap()
            .publish_batch(chunk.to_vec())
            .await
            .unwrap();
    }
}

fn numbered(range: std::ops::Range<u32>) -> impl Iterator<Item = Vec<u8>> {
    range.map(|i| i.to_string().into_bytes())
}

async fn wait_records(c: &Collector, n: usize) {
    wait_until(&format!("{n} records in the sink"), || async {
        (c.len() >= n).then_some(())
    })
    .await;
}

fn sequences(c: &Collector) -> Vec<u64> {
    c.records().iter().map(|r| r.sequence).collect()
}

/// Every matching message reaches the sink once, in order, in batches; others don't.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_receives_its_topics_in_order() {
    let c = Collector::new();
    let mut s = sink("all", "collect", &["sensors.>", "alerts"]);
    s.batch.max_events = 100;
    let bus = start(vec![s], &c).await;
    publish(&bus, "sensors.d1.temp", numbered(0..1000)).await;
    publish(&bus, "other", numbered(0..10)).await;
    publish(&bus, "alerts", numbered(0..5)).await;
    wait_records(&c, 1005).await;
    let records = c.records();
    let temps: Vec<u64> = records
        .iter()
        .filter(|r| r.topic.as_str() == "sensors.d1.temp")
        .map(|r| r.sequence)
        .collect();
    assert_eq!(temps, (1..=1000).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.topic.as_str() != "other"));
    assert!(c.writes.load(Ordering::Relaxed) >= 10, "batches of at most 100");
    let snap = bus.snapshot().await.unwrap();
    let s = snap.sink("all").unwrap();
    assert_eq!((s.written, s.status, s.pending), (1005, SinkStatus::Running, 0));
    bus.shutdown().await;
}

/// A poison record (index known, or found by splitting) goes to `$dlq.<sink>` with the
/// reason and its origin; every other record of its batch lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_topic() {
    for index_known in [true, false] {
        let c = Collector::new();
        c.poison_index_known.store(index_known, Ordering::Relaxed);
        let mut s = sink("pg", "collect", &["t"]);
        s.batch.max_events = 50;
        s.batch.max_delay_ms = 200;
        let bus = start(vec![s], &c).await;
        let mut dlq = bus.subscribe("$dlq.pg", SubscriptionOptions::default()).await.unwrap();
        let payloads = (0..40u32).map(|i| {
            if i == 17 || i == 30 {
                POISON.to_vec()
            } else {
                i.to_string().into_bytes()
            }
        });
        publish(&bus, "t", payloads).await;
        wait_records(&c, 38).await;
        let mut dead = Vec::new();
        for _ in 0..2 {
            let Some(Event::Delivery(d)) = next(&mut dlq).await else {
                panic!("no dead letter")
            };
            dead.push(d);
        }
        assert_eq!(
            dead.iter()
                .map(|d| d.headers.get("dlq-sequence").unwrap())
                .collect::<Vec<_>>(),
            ["18", "31"]
        );
        assert_eq!(dead[0].headers.get("dlq-topic"), Some("t"));
        assert!(dead[0].headers.get("dlq-reason").unwrap().contains("poison"));
        assert_eq!(&dead[0].payload[..], POISON);
        let mut want: Vec<u64> = (1..=40).filter(|s| *s != 18 && *s != 31).collect();
        let mut got = sequences(&c);
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "index known: {index_known}");
        assert_eq!(bus.snapshot().await.unwrap().sink("pg").unwrap().dead_lettered, 2);
        bus.shutdown().await;
    }
}

/// A sink whose destination is down retries and loses nothing; a second sink on the same
/// topics keeps receiving all along; live subscribers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sink_does_not_stall_others() {
    let failing = Collector::new();
    failing.failing.store(true, Ordering::Release);
    let healthy = Collector::new();
    let reg = with_healthy(registry(&failing), &healthy);
    let mut down = sink("down", "fail", &["t"]);
    down.buffer.max_events = 100_000;
    let config = BusConfig {
        sinks: vec![down, sink("up", "healthy", &["t"])],
        ..BusConfig::default()
    };
    let bus = Bus::start_with_sinks(config, reg).await.unwrap();
    publish(&bus, "t", numbered(0..3000)).await;
    wait_records(&healthy, 3000).await;
    wait_until("retries", || async {
        let s = bus.snapshot().await.unwrap();
        let d = s.sink("down").unwrap();
        (d.retries >= 3 && d.status == SinkStatus::Retrying).then_some(())
    })
    .await;
    assert!(failing.is_empty());
    failing.failing.store(false, Ordering::Release);
    wait_records(&failing, 3000).await;
    assert_eq!(sequences(&failing), (1..=3000).collect::<Vec<_>>());
    let snap = bus.snapshot().await.unwrap();
    assert_eq!(snap.sink("down").unwrap().written, 3000);
    assert_eq!(snap.sink("down").unwrap().status, SinkStatus::Running);
    bus.shutdown().await;
}

/// A stuck sink with a full buffer (default `when_full = "drop_newest"`) stalls neither
/// the topic's live subscribers nor another sink; its drops are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_sink_drops_instead_of_stalling() {
    let stuck = Collector::new();
    let healthy = Collector::new();
    let reg = with_healthy(registry(&stuck), &healthy);
    let mut s = sink("stuck", "block", &["t"]);
    s.buffer.max_events = 100;
    s.batch.max_events = 10;
    let mut config = BusConfig {
        sinks: vec![s, sink("up", "healthy", &["t"])],
        ..BusConfig::default()
    };
    config.shutdown.drain_timeout_ms = 200;
    let bus = Bus::start_with_sinks(config, reg).await.unwrap();
    let mut live = bus
        .subscribe(
            "t",
            SubscriptionOptions::default().overflow(streambus_core::OverflowPolicy::Block),
        )
        .await
        .unwrap();
    publish(&bus, "t", numbered(0..5000)).await;
    assert_eq!(payloads(&mut live, 5000).await.len(), 5000);
    wait_records(&healthy, 5000).await;
    let snap = bus.snapshot().await.unwrap();
    let s = snap.sink("stuck").unwrap();
    // Bounded: the subscription buffer, the run the intake holds, one in its channel,
    // and the run the worker is batching from; everything else was dropped, counted.
    assert!(s.pending <= 4 * 100 && s.dropped + s.pending == 5000, "{s:?}");
    assert_eq!(s.written, 0);
    bus.shutdown().await;
}

/// A panicking sink is restarted with backoff and writes the batch it panicked on; a
/// fatal error restarts it too; restarts are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_fatal_errors_restart_the_sink() {
    let c = Collector::new();
    c.panic_writes.store(2, Ordering::Release);
    let bus = start(vec![sink("p", "panic", &["t"])], &c).await;
    publish(&bus, "t", numbered(0..100)).await;
    wait_records(&c, 100).await;
    assert_eq!(sequences(&c), (1..=100).collect::<Vec<_>>());
    let s = bus.snapshot().await.unwrap();
    assert_eq!(s.sink("p").unwrap().restarts, 2);
    assert_eq!(c.opens.load(Ordering::Relaxed), 3);
    assert!(s.sink("p").unwrap().last_error.as_deref().unwrap().contains("panic"));
    bus.shutdown().await;

    let c = Collector::new();
    c.failing.store(true, Ordering::Release);
    c.fatal.store(true, Ordering::Release);
    let bus = start(vec![sink("f", "fail", &["t"])], &c).await;
    publish(&bus, "t", numbered(0..10)).await;
    wait_until("a restart", || async {
        let s = bus.snapshot().await.unwrap();
        (s.sink("f").unwrap().restarts >= 1).then_some(())
    })
    .await;
    c.failing.store(false, Ordering::Release);
    wait_records(&c, 10).await;
    bus.shutdown().await;
}

/// Past its restart budget a sink is quarantined: its snapshot says so and what it
/// would have received goes to its dead-letter topic; the supervisor and other sinks
/// carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_past_the_restart_budget() {
    let c = Collector::new();
    let healthy = Collector::new();
    let reg = with_healthy(registry(&c), &healthy);
    let mut bad = sink("bad", "panic", &["t"]);
    bad.restart.max_restarts = 2;
    let config = BusConfig {
        sinks: vec![bad, sink("good", "healthy", &["t"])],
        ..BusConfig::default()
    };
    let bus = Bus::start_with_sinks(config, reg).await.unwrap();
    let mut dlq = bus.subscribe("$dlq.bad", SubscriptionOptions::default()).await.unwrap();
    publish(&bus, "t", [PANIC.to_vec()]).await;
    wait_until("quarantine", || async {
        let s = bus.snapshot().await.unwrap();
        (s.sink("bad").unwrap().status == SinkStatus::Quarantined).then_some(())
    })
    .await;
    let Some(Event::Delivery(d)) = next(&mut dlq).await else {
        panic!("no dead letter")
    };
    assert!(
        d.headers.get("dlq-reason").unwrap().contains("quarantined"),
        "{:?}",
        d.headers
    );
    publish(&bus, "t", numbered(0..5)).await;
    for _ in 0..5 {
        assert!(matches!(next(&mut dlq).await, Some(Event::Delivery(_))));
    }
    wait_records(&healthy, 6).await;
    assert_eq!(bus.snapshot().await.unwrap().sink("bad").unwrap().restarts, 2);
    bus.shutdown().await;
}

fn disk_sink(name: &str, kind: &str, dir: &std::path::Path) -> SinkConfig {
    let mut s = sink(name, kind, &["d.>"]);
    s.buffer.kind = BufferKind::Disk;
    s.buffer.path = Some(dir.to_owned());
    s.buffer.max_bytes = 8 << 20;
    s.buffer.segment_bytes = 64 << 10;
    s.buffer.fsync = FsyncPolicy::Never;
    s
}

/// Durable acks: a durable publish returns once the disk buffer has it, even while the
/// sink is stuck; after the bus restarts, the buffered records reach the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_publish_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = Collector::new();
    let mut cfg = BusConfig::default();
    cfg.shutdown.drain_timeout_ms = 200;
    cfg.sinks = vec![disk_sink("dur", "block", dir.path())];
    let bus = Bus::start_with_sinks(cfg.clone(), registry(&stuck)).await.unwrap();
    let session = bus.default_session().await.unwrap();
    for i in 0..20u32 {
        let batch: Vec<Message> = (0..50)
            .map(|j| Message::new(Topic::new("d.x").unwrap(), format!("{}", i * 50 + j)))
            .collect();
        session.publish_durable(batch).await.unwrap().wait().await.unwrap();
    }
    // A publish that matches no durable sink is durable at once.
    session
        .publish_durable(vec![Message::new(Topic::new("elsewhere").unwrap(), "x")])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let snap = bus.snapshot().await.unwrap();
    let b = snap.sink("dur").unwrap().buffer.clone().unwrap();
    assert_eq!(b.appended, 1000);
    bus.shutdown().await;
    assert!(stuck.is_empty());

    let c = Collector::new();
    cfg.sinks = vec![disk_sink("dur", "collect", dir.path())];
    let bus = Bus::start_with_sinks(cfg, registry(&c)).await.unwrap();
    wait_records(&c, 1000).await;
    let payloads: Vec<u32> = c
        .records()
        .iter()
        .map(|r| std::str::from_utf8(&r.payload).unwrap().parse().unwrap())
        .collect();
    assert_eq!(payloads, (0..1000).collect::<Vec<_>>());
    wait_until("acknowledged", || async {
        let s = bus.snapshot().await.unwrap();
        (s.sink("dur").unwrap().buffer.as_ref().unwrap().unacked_records == 0).then_some(())
    })
    .await;
    bus.shutdown().await;
}

/// A durable buffer full under `drop_newest` refuses durable acks (and counts the drop)
/// instead of acknowledging what it could not store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_durable_buffer_refuses_durable_acks() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::new();
    let mut s = disk_sink("small", "block", dir.path());
    s.buffer.max_bytes = 1 << 20;
    s.buffer.segment_bytes = 64 << 10;
    s.buffer.when_full = WhenFull::DropNewest;
    let mut cfg = BusConfig::default();
    cfg.shutdown.drain_timeout_ms = 200;
    cfg.sinks = vec![s];
    let bus = Bus::start_with_sinks(cfg, registry(&c)).await.unwrap();
    let session = bus.default_session().await.unwrap();
    let big = vec![b'x'; 100 * 1024];
    let mut refused = 0;
    for _ in 0..20 {
        match session
            .publish_durable(vec![Message::new(Topic::new("d.big").unwrap(), big.clone())])
            .await
            .unwrap()
            .wait()
            .await
        {
            Ok(()) => {}
            Err(BusError::NotDurable) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 5, "refused {refused}");
    assert_eq!(bus.snapshot().await.unwrap().sink("small").unwrap().dropped, refused);
    bus.shutdown().await;
}

/// An unknown sink type or a bad type-specific field fails the start with the field.
#[tokio::test]
async fn bad_sink_config_names_the_field() {
    let c = Collector::new();
    let config = BusConfig {
        sinks: vec![sink("x", "nope", &["t"])],
        ..BusConfig::default()
    };
    let Err(BusError::Config(e)) = Bus::start_with_sinks(config, registry(&c)).await else {
        panic!()
    };
    assert_eq!(e.field, "sinks.x.type");
    let config = BusConfig {
        sinks: vec![
            sink("f", "file", &["t"])
                .option("path", "/tmp")
                .option("max_file_bytes", "big"),
        ],
        ..BusConfig::default()
    };
    let Err(BusError::Config(e)) = Bus::start(config).await else {
        panic!()
    };
    assert_eq!(e.field, "sinks.f.max_file_bytes");
}
