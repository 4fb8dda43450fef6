//! The contract every queue and store sink is held to, end to end through a gRPC
//! server and the real destination server, counted with the destination's own client:
//!
//! - [`writes_every_message`]: 100k messages published become 100k entries;
//! - [`outage_loses_nothing`]: the destination cut (through a proxy) in the middle of a
//!   run loses nothing once it is back, while a file sink keeps receiving throughout;
//! - [`poison_goes_to_the_dead_letter_topic`]: a record the destination refuses goes
//!   to `$dlq.<sink>` with the reason, and the rest of its batch lands;
//! - [`durable_acks_survive_a_kill`]: with a disk buffer, what was durably acked
//!   reaches the destination after the bus process is killed and started again.
//!
//! A destination says how to point a sink at it and how to count what it holds.

#![allow(dead_code, unreachable_pub, reason = "each sink's test file uses part of it")]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use streambus::client::{Client, ClientOptions};
use streambus_core::{BusConfig, Event, Message, SinkStatus, SubscriptionOptions, Topic};
use streambus_types::SinkConfig;
use streambus_types::config::{BufferKind, FsyncPolicy, WhenFull};

use crate::harness::TestServer;
use crate::proxy::Proxy;
use crate::served::Served;

/// Sink tests wait longer than the harness: a debug build writes 100k entries in seconds.
pub const SINK_PATIENCE: Duration = Duration::from_secs(120);

/// A destination server and what the contract needs of it.
pub trait Destination {
    /// The sink type (`nats`, `redis`…).
    const KIND: &'static str;
    /// Whether the destination deduplicates on the message id (then counts are exact
    /// even after a retried batch).
    const IDEMPOTENT: bool;
    /// The real server's address.
    fn server(&self) -> SocketAddr;
    /// The sink's own options, with the server reached at `addr` (the server's or a
    /// proxy's).
    fn options(&self, addr: SocketAddr) -> Vec<(&'static str, serde_json::Value)>;
    /// Removes whatever an earlier run of this test left.
    async fn reset(&self);
    /// Entries the destination holds now: all of them and distinct message ids.
    async fn count(&self) -> (usize, usize);
    /// A message the destination refuses on its own, if it can refuse one record.
    fn poison(&self) -> Option<Message>;
}

/// Polls `check` every 50 ms until it holds, failing after [`SINK_PATIENCE`].
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + SINK_PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sink under test, named `sink`, on `telemetry.>`, its destination at `addr`.
pub fn sink<D: Destination>(d: &D, addr: SocketAddr) -> SinkConfig {
    let mut s = SinkConfig::new("sink", D::KIND, &["telemetry.>"]);
    for (k, v) in d.options(addr) {
        s = s.option(k, v);
    }
    s.batch.max_events = 5000;
    s.batch.max_delay_ms = 20;
    // Exact counts: nothing may be dropped while a debug build's sink lags.
    s.buffer.when_full = WhenFull::Block;
    s.retry.initial_backoff_ms = 20;
    s.retry.max_backoff_ms = 250;
    s
}

/// A JSON reading of about 200 bytes: device `d`, number `i`.
pub fn reading(d: u32, i: u32) -> String {
    format!(
        r#"{{"device":"dev{d:04}","seq":{i},"temperature":{:.2},"humidity":{:.1},"battery":0.93,"firmware":"2.4.1","site":"plant-7","ok":true,"pad":"{}"}}"#,
        20.0 + f64::from(i % 100) / 10.0,
        40.0 + f64::from(i % 50),
        "x".repeat(48)
    )
}

/// Publishes readings `from..from + count` over gRPC from 10 devices, acked.
pub async fn publish_readings(client: &Client, from: u32, count: u32) {
    let messages: Vec<Message> = (from..from + count)
        .map(|i| {
            Message::new(
                Topic::new(&format!("telemetry.dev{}.env", i % 10)).unwrap(),
                reading(i % 10, i),
            )
        })
        .collect();
    for chunk in messages.chunks(2000) {
        client.publish_batch(chunk.to_vec(), true).await.unwrap();
    }
}

/// Waits until the destination holds `want` distinct entries, then checks the total
/// (exactly `want` for an idempotent destination, at least `want` otherwise).
pub async fn expect_entries<D: Destination>(d: &D, want: usize) {
    wait_for(&format!("{want} entries in {}", D::KIND), || async {
        d.count().await.1 >= want
    })
    .await;
    let (all, distinct) = d.count().await;
    assert_eq!(distinct, want, "distinct message ids in {}", D::KIND);
    if D::IDEMPOTENT {
        assert_eq!(all, want, "no duplicate in {}", D::KIND);
    } else {
        assert!(all >= want, "{all} entries in {}", D::KIND);
    }
}

/// 100k messages published over gRPC become 100k entries.
pub async fn writes_every_message<D: Destination>(d: &D) {
    d.reset().await;
    let config = BusConfig {
        sinks: vec![sink(d, d.server())],
        ..BusConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let client = server.client("telemetry").await;
    publish_readings(&client, 0, 100_000).await;
    expect_entries(d, 100_000).await;
    // The destination may show the last batch before the sink has its acknowledgement.
    wait_for("the sink's own count", || async {
        server.snapshot().await.sink("sink").unwrap().written >= 100_000
    })
    .await;
    let snapshot = server.snapshot().await;
    let s = snapshot.sink("sink").unwrap();
    assert_eq!((s.written, s.dead_lettered, s.dropped), (100_000, 0, 0), "{s:?}");
    server.shutdown().await;
}

/// The destination unreachable (a proxy cut) while publishing: the sink retries, a
/// file sink on the same topics keeps receiving throughout, and once the destination
/// is back every message is in it.
pub async fn outage_loses_nothing<D: Destination>(d: &D) {
    d.reset().await;
    let proxy = Proxy::start(d.server()).await;
    let files = tempfile::tempdir().unwrap();
    let mut file = SinkConfig::new("archive", "file", &["telemetry.>"]).option("path", files.path().to_str().unwrap());
    file.batch.max_delay_ms = 10;
    let config = BusConfig {
        sinks: vec![sink(d, proxy.addr), file],
        ..BusConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let client = server.client("telemetry").await;
    let lines = || {
        std::fs::read_dir(files.path())
            .unwrap()
            .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap().lines().count())
            .sum::<usize>()
    };
    publish_readings(&client, 0, 2000).await;
    expect_entries(d, 2000).await;
    proxy.stop();
    for round in 1..4 {
        publish_readings(&client, round * 2000, 2000).await;
        let want = (round as usize + 1) * 2000;
        wait_for("the file sink during the outage", || async { lines() == want }).await;
    }
    wait_for("the sink retrying", || async {
        server.snapshot().await.sink("sink").unwrap().status == SinkStatus::Retrying
    })
    .await;
    assert_eq!(d.count().await.1, 2000, "nothing reached the cut destination");
    proxy.resume().await;
    publish_readings(&client, 8000, 2000).await;
    expect_entries(d, 10_000).await;
    assert_eq!(lines(), 10_000);
    wait_for("the sink's own count", || async {
        server.snapshot().await.sink("sink").unwrap().written >= 10_000
    })
    .await;
    let s = server.snapshot().await.sink("sink").cloned().unwrap();
    assert!(s.retries > 0 && s.written >= 10_000 && s.dead_lettered == 0, "{s:?}");
    server.shutdown().await;
}

/// A record the destination refuses goes to `$dlq.sink` with the destination's reason;
/// the rest of its batch lands.
pub async fn poison_goes_to_the_dead_letter_topic<D: Destination>(d: &D) {
    let Some(poison) = d.poison() else { return };
    d.reset().await;
    let mut sink = sink(d, d.server());
    sink.batch.max_delay_ms = 300;
    let config = BusConfig {
        sinks: vec![sink],
        ..BusConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let client = server.client("telemetry").await;
    let mut dlq = client
        .subscribe("$dlq.sink", SubscriptionOptions::default())
        .await
        .unwrap();
    let messages: Vec<Message> = (0..10)
        .map(|i| {
            if i == 6 {
                poison.clone()
            } else {
                Message::new(Topic::new("telemetry.dev1.env").unwrap(), reading(1, i))
            }
        })
        .collect();
    client.publish_batch(messages, true).await.unwrap();
    let dead = tokio::time::timeout(SINK_PATIENCE, dlq.next()).await.unwrap();
    let Some(Event::Delivery(dead)) = dead else {
        panic!("{dead:?}")
    };
    assert_eq!(dead.payload, poison.payload);
    assert!(
        dead.headers.get("dlq-reason").is_some_and(|r| !r.is_empty()),
        "{:?}",
        dead.headers
    );
    expect_entries(d, 9).await;
    server.shutdown().await;
}

/// With a disk buffer and the destination unreachable, 5000 durably acked messages
/// survive a SIGKILL of `streambus serve`: started again with the destination back, it
/// writes every one of them.
pub async fn durable_acks_survive_a_kill<D: Destination>(d: &D) {
    d.reset().await;
    let proxy = Proxy::stopped(d.server()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(d, proxy.addr);
    sink.buffer.kind = BufferKind::Disk;
    sink.buffer.fsync = FsyncPolicy::Never;
    let mut config = BusConfig {
        sinks: vec![sink],
        ..BusConfig::default()
    };
    config.storage.data_dir = dir.path().join("data");
    let path = dir.path().join("streambus.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let args = ["--grpc-addr", "127.0.0.1:0", "--config", path.to_str().unwrap()];
    let served = Served::start(&args, &[]);
    let client = Client::connect_with(ClientOptions::new(served.url.clone()).name("crash"))
        .await
        .unwrap();
    for chunk in 0..5u32 {
        let batch: Vec<Message> = (0..1000)
            .map(|i| Message::new(Topic::new("telemetry.dev7.env").unwrap(), reading(7, chunk * 1000 + i)))
            .collect();
        assert_eq!(client.publish_durable(batch).await.unwrap(), 1000);
    }
    client.close();
    served.kill();
    assert_eq!(d.count().await.0, 0, "nothing reached the destination before the kill");
    proxy.resume().await;
    let served = Served::start(&args, &[]);
    expect_entries(d, 5000).await;
    served.terminate();
}
