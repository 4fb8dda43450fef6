//! The `kafka` sink end to end (feature `kafka`: `cargo test --features kafka --test
//! sink_kafka`, which `.ci/run` runs once).
//!
//! No Kafka broker can be installed on these machines, so the destination is
//! librdkafka's own mock cluster, started inside the test: brokers that speak the Kafka
//! protocol on loopback ports, with failure injection (a broker taken down and up). The
//! gRPC side is real: messages are published to a bus server (in-process, or a
//! `streambus serve` child for the kill test), and counted by a Kafka consumer.

#[path = "common/contract.rs"]
mod contract;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/served.rs"]
mod served;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use contract::{Destination, expect_entries, publish_readings, reading, wait_for};
use harness::TestServer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::json;
use served::Served;
use streambus::client::{Client, ClientOptions};
use streambus_core::{BusConfig, Message, SinkStatus, Topic};
use streambus_types::SinkConfig;
use streambus_types::config::{BufferKind, FsyncPolicy};

/// What the counting consumer has read: messages and distinct `streambus-msg-id`s.
type Seen = Arc<parking_lot::Mutex<(usize, HashSet<String>)>>;

/// A one-broker mock cluster, the test's topic on it, and a consumer thread counting
/// what reaches the topic as it arrives (the mock keeps only the newest few megabytes
/// of a partition, so counting must keep up rather than read at the end).
struct Cluster {
    mock: MockCluster<'static, DefaultProducerContext>,
    topic: String,
    seen: Seen,
    /// Tells the consumer thread to stop; it is joined on drop.
    stop: Arc<AtomicBool>,
    consumer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.consumer.take() {
            let _ = t.join();
        }
    }
}

/// Partitions of the test topic: the mock keeps the newest 5 MB of each partition, so
/// 100k messages spread over 64 (no key: librdkafka's sticky partitioner) stay whole
/// even when the counting consumer falls behind.
const PARTITIONS: i32 = 64;

fn cluster(name: &str) -> Cluster {
    let mock = MockCluster::new(1).unwrap();
    let topic = format!("sbtest-{name}");
    mock.create_topic(&topic, PARTITIONS, 1).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", format!("sbtest-{name}-counter"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&partitions).unwrap();
    let seen: Seen = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let id = message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "streambus-msg-id"))
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    .expect("every message carries its message id");
                let mut seen = seen.lock();
                seen.0 += 1;
                seen.1.insert(id);
            }
        })
    };
    Cluster {
        mock,
        topic,
        seen,
        stop,
        consumer: Some(thread),
    }
}

impl Destination for Cluster {
    const KIND: &'static str = "kafka";
    const IDEMPOTENT: bool = false;

    fn server(&self) -> SocketAddr {
        // The sink finds the brokers from `brokers`; the contract's proxy is not used.
        self.mock
            .bootstrap_servers()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn options(&self, _addr: SocketAddr) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            ("brokers", json!(self.mock.bootstrap_servers())),
            ("topic", json!(self.topic)),
            ("key", json!("")),
            ("message_timeout_ms", json!(2000)),
        ]
    }

    async fn reset(&self) {
        *self.seen.lock() = (0, HashSet::new());
    }

    async fn count(&self) -> (usize, usize) {
        let seen = self.seen.lock();
        (seen.0, seen.1.len())
    }

    fn poison(&self) -> Option<Message> {
        // Over the producer's message.max.bytes (1,000,000), within the bus's 1 MiB.
        Some(Message::new(
            Topic::new("telemetry.dev1.env").unwrap(),
            "p".repeat(1_040_000),
        ))
    }
}

/// The sink under test on `telemetry.>`.
fn sink(d: &Cluster) -> SinkConfig {
    let mut s = SinkConfig::new("sink", "kafka", &["telemetry.>"]);
    for (k, v) in d.options(d.server()) {
        s = s.option(k, v);
    }
    s.batch.max_events = 5000;
    s.batch.max_delay_ms = 20;
    s.buffer.when_full = streambus_types::config::WhenFull::Block;
    s.retry.initial_backoff_ms = 20;
    s.retry.max_backoff_ms = 250;
    s
}

/// 100k messages published over gRPC become 100k Kafka messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_writes_every_message() {
    contract::writes_every_message(&cluster("every")).await;
}

/// A message over the producer's size limit goes to `$dlq.sink`; the rest lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_poison_goes_to_the_dead_letter_topic() {
    contract::poison_goes_to_the_dead_letter_topic(&cluster("poison")).await;
}

/// The broker down mid-run: the sink retries, a file sink keeps receiving, and once
/// the broker is back every message is in the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_loses_nothing() {
    let d = cluster("outage");
    let files = tempfile::tempdir().unwrap();
    let mut file = SinkConfig::new("archive", "file", &["telemetry.>"]).option("path", files.path().to_str().unwrap());
    file.batch.max_delay_ms = 10;
    let config = BusConfig {
        sinks: vec![sink(&d), file],
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
    expect_entries(&d, 2000).await;
    d.mock.broker_down(1).unwrap();
    for round in 1..4 {
        publish_readings(&client, round * 2000, 2000).await;
        let want = (round as usize + 1) * 2000;
        wait_for("the file sink during the outage", || async { lines() == want }).await;
    }
    wait_for("the kafka sink retrying", || async {
        server.snapshot().await.sink("sink").unwrap().status == SinkStatus::Retrying
    })
    .await;
    d.mock.broker_up(1).unwrap();
    publish_readings(&client, 8000, 2000).await;
    expect_entries(&d, 10_000).await;
    assert_eq!(lines(), 10_000);
    server.shutdown().await;
}

/// With the broker down and a disk buffer, 5000 durably acked messages survive a
/// SIGKILL of `streambus serve`; started again with the broker up, it writes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_durable_acks_survive_a_kill() {
    let d = cluster("kill");
    d.mock.broker_down(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(&d);
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
    d.mock.broker_up(1).unwrap();
    let served = Served::start(&args, &[]);
    expect_entries(&d, 5000).await;
    served.terminate();
}
