//! The `redis` sink end to end against the real Redis: the sink contract
//! (`common/contract.rs`), counted with `XLEN` and the entries' `id` fields.

#[path = "common/contract.rs"]
mod contract;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/served.rs"]
mod served;
#[path = "common/servers.rs"]
mod servers;

use std::collections::HashSet;
use std::net::SocketAddr;

use contract::Destination;
use redis::AsyncCommands;
use serde_json::json;
use streambus_core::{Message, Topic};

/// The streams of one test: keys `sbtest:<test>:<topic>`.
struct Streams {
    server: SocketAddr,
    name: &'static str,
}

/// The topic whose key the test makes a plain string, so that `XADD` to it fails.
const POISON_TOPIC: &str = "telemetry.poison.env";

impl Streams {
    /// A connection for counting: reading 100k entries back takes longer than the
    /// client's default half-second response timeout in a debug build under load.
    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!("redis://{}", self.server)).unwrap();
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(30)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap()
    }

    async fn keys(&self) -> Vec<String> {
        let mut c = self.connection().await;
        c.keys(format!("sbtest:{}:telemetry.dev*", self.name)).await.unwrap()
    }
}

impl Destination for Streams {
    const KIND: &'static str = "redis";
    const IDEMPOTENT: bool = false;

    fn server(&self) -> SocketAddr {
        self.server
    }

    fn options(&self, addr: SocketAddr) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            ("url", json!(format!("redis://{addr}"))),
            ("key", json!(format!("sbtest:{}:{{topic}}", self.name))),
            ("connect_timeout_ms", json!(1000)),
            ("response_timeout_ms", json!(2000)),
        ]
    }

    async fn reset(&self) {
        let mut c = self.connection().await;
        let keys: Vec<String> = c.keys(format!("sbtest:{}:*", self.name)).await.unwrap();
        for key in keys {
            let _: () = c.del(key).await.unwrap();
        }
        let _: () = c
            .set(format!("sbtest:{}:{POISON_TOPIC}", self.name), "not a stream")
            .await
            .unwrap();
    }

    async fn count(&self) -> (usize, usize) {
        let mut c = self.connection().await;
        let mut all = 0;
        let mut ids = HashSet::new();
        for key in self.keys().await {
            let entries: redis::streams::StreamRangeReply = c.xrange_all(&key).await.unwrap();
            all += entries.ids.len();
            for entry in entries.ids {
                if let Some(redis::Value::BulkString(id)) = entry.map.get("id") {
                    ids.insert(id.clone());
                }
            }
        }
        (all, ids.len())
    }

    fn poison(&self) -> Option<Message> {
        Some(Message::new(
            Topic::new(POISON_TOPIC).unwrap(),
            "refused: the key is a string",
        ))
    }
}

async fn destination(name: &'static str) -> Option<Streams> {
    let server = servers::addr("STREAMBUS_TEST_REDIS_URL").await?;
    Some(Streams { server, name })
}

/// 100k messages published over gRPC become 100k stream entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sink_writes_every_message() {
    let Some(d) = destination("every").await else { return };
    contract::writes_every_message(&d).await;
}

/// Redis cut off mid-run: nothing is lost (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_loses_nothing() {
    let Some(d) = destination("outage").await else { return };
    contract::outage_loses_nothing(&d).await;
}

/// An entry Redis refuses (its key holds a string) goes to `$dlq.sink`; the rest lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_poison_goes_to_the_dead_letter_topic() {
    let Some(d) = destination("poison").await else { return };
    contract::poison_goes_to_the_dead_letter_topic(&d).await;
}

/// Durable acks on a disk buffer survive SIGKILL of the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_durable_acks_survive_a_kill() {
    let Some(d) = destination("kill").await else { return };
    contract::durable_acks_survive_a_kill(&d).await;
}
